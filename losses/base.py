"""The shape every loss shares: per-sample values, with optional class weights (DRW).

Losses return one value per sample (reduction none): that is the interface between loss and
optimizer, which weights samples per class (ImbSAM, Focal-SAM) before averaging over the batch.
Class weights (DRW) are already inside the returned values. With `reduction="batch"` the batch
mean of the output is sum_i w_{y_i} l_i / b (the official Focal-SAM code); with "weights" it is
sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's weighted mean), reached by scaling every value by
b / sum_i w_{y_i}.
"""
import torch
import torch.nn as nn


class PerSampleLoss(nn.Module):
    def __init__(self, class_counts, reduction: str = "batch"):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if reduction not in ("batch", "weights"):
            raise ValueError(f"reduction must be 'batch' or 'weights', got {reduction!r}")
        self.reduction = reduction
        self.register_buffer("log_prior", (counts / counts.sum()).log().float())   # (C,) log pi_k
        self.register_buffer("class_weight", torch.ones(len(counts)))              # (C,) DRW weights

    def set_class_weight(self, weight: torch.Tensor) -> None:
        self.class_weight.copy_(torch.as_tensor(weight, dtype=self.class_weight.dtype))

    def unweighted(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B, C), (B,) -> (B,)
        # Under autocast the logits may be half precision: compute the loss in fp32 (fp64 stays).
        loss = self.unweighted(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), targets)
        w = self.class_weight.to(loss.dtype)[targets]
        if self.reduction == "weights":
            w = w * (len(targets) / w.sum())
        return w * loss
