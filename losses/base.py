"""The shape every loss shares: per-sample values, with optional class weights (DRW).

Losses return one value per sample (reduction none): that is the interface between loss and
optimizer, which weights samples per class (ImbSAM, Focal-SAM) before averaging over the batch.
Class weights (DRW) are already inside the returned values. With `reduction="batch"` the batch
mean of the output is sum_i w_{y_i} l_i / b (the official Focal-SAM code); with "weights" it is
sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's weighted mean), reached by scaling every value by
b / sum_i w_{y_i}. Under DDP set `process_group` (e.g. torch.distributed.group.WORLD): b and
sum_i w_{y_i} are then those of the GLOBAL batch, so that N processes compute what one process
computes on the whole batch; None (default) normalises over the local batch.

Class-dependent constants (log prior, margins, scales, DRW weights) are float64 buffers, cast to
the dtype of the logits where used: exact in a float64 run, and no extra rounding in float32.
"""
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn

from core.collectives import all_reduce_sum_
from core.options import Checked, opt
from losses.drw import check_drw


@dataclass(frozen=True)
class LossOptions(Checked):
    """Keys of the `loss` section every loss has; a loss with keys of its own extends this class."""
    name: str = opt("ce", "the loss (registry name)")
    drw_epoch: Optional[int] = opt(None, "DRW: class-balanced weights from this epoch on (0-based); null: never")
    drw_beta: float = opt(0.9999, "DRW effective-number beta, in (0, 1)")
    drw_reduction: Literal["batch", "weights"] = opt("batch", "batch: sum / b (Focal-SAM code); weights: / sum of weights")

    def check(self) -> None:
        check_drw(self.drw_beta, self.drw_epoch)


class PerSampleLoss(nn.Module):
    def __init__(self, class_counts, reduction: str = "batch"):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if reduction not in ("batch", "weights"):
            raise ValueError(f"reduction must be 'batch' or 'weights', got {reduction!r}")
        self.reduction = reduction
        self.process_group = None       # DDP: normalise "weights" over this group's global batch
        self.register_buffer("log_prior", (counts / counts.sum()).log())                  # (C,) log pi_k
        self.register_buffer("class_weight", torch.ones(len(counts), dtype=torch.float64))  # (C,) DRW

    def set_class_weight(self, weight: torch.Tensor) -> None:
        self.class_weight.copy_(torch.as_tensor(weight, dtype=self.class_weight.dtype))

    def unweighted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B, C), (B,) -> (B,)
        # Under autocast the logits may be half precision: compute the loss in fp32 (fp64 stays).
        loss = self.unweighted(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), targets)
        w = self.class_weight.to(loss.dtype)[targets]
        if self.reduction == "weights":
            w = w * self._batch_over_weight_sum(w)
        return w * loss

    def _batch_over_weight_sum(self, w: torch.Tensor) -> torch.Tensor:
        stats = torch.stack([torch.tensor(float(len(w)), dtype=w.dtype, device=w.device), w.sum()])
        if self.process_group is not None:
            all_reduce_sum_([stats], self.process_group)
        return stats[0] / stats[1]
