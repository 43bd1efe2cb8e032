"""What every optimizer here shares: the wrapped base SGD, mixed precision, BN handling, DDP sync.

An optimizer here is called once per batch as `opt.step(model, images, targets, criterion)` and
runs every forward and backward pass itself, then the base SGD update; `criterion(logits,
targets)` must return per-sample losses. It wraps `torch.optim.SGD` and shares its
`param_groups` (the pattern of the popular SAM wrapper), so torch's LR schedulers work on it and
`rho` is a param-group value like `lr`. Weight decay and momentum belong to the base step only.

Distributed: when `model` is a DistributedDataParallel module, every pass runs under
`model.no_sync()` and the gradients that need it are summed across ranks here, in coalesced
buckets. DDP's own reducer cannot serve a sharpness-aware step: it expects exactly one backward
per forward (pytorch issue 47260), while these steps run two or three backward passes on one
forward, and the perturbation needs a reduced gradient in the middle of the step. Losses are
normalised by the GLOBAL batch size and summed across ranks, so the result equals one process on
the whole batch.
"""
import contextlib
from typing import List, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from core.collectives import all_reduce_sum_

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """Losses in fp32 at least (fp64 stays fp64, for exactness tests)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class SharpnessOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses implement `step(model, images, targets, criterion)`.

    Args:
        params: model parameters (or param-group dicts, each may carry its own `rho`).
        lr, momentum, weight_decay, nesterov: the base SGD step.
        rho: perturbation radius (ignored by plain SGD).
        bn_mode: "update" lets BatchNorm running statistics update during the perturbed forward
            pass (the official code); "freeze" restores them afterwards, so only clean passes count.
        exclude_bn_bias: leave normalisation-layer parameters and biases unperturbed.
        perturbation: under DDP, "global" perturbs along the gradient of the whole (global) batch,
            which is what the official single-process DataParallel runs computed; "local" along
            each replica's own gradient (m-sharpness with m = per-process batch).
        amp: "none", "bf16" (autocast, no scaler) or "fp16" (autocast plus one GradScaler for the
            whole multi-pass step: unscale before the norm, skip the step on inf/NaN, update once).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, rho: float = 0.05, bn_mode: str = "update",
                 exclude_bn_bias: bool = False, perturbation: str = "global", amp: str = "none"):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if bn_mode not in ("update", "freeze"):
            raise ValueError(f"bn_mode must be 'update' or 'freeze', got {bn_mode!r}")
        if perturbation not in ("global", "local"):
            raise ValueError(f"perturbation must be 'global' or 'local', got {perturbation!r}")
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
        super().__init__(params, dict(rho=rho))
        self.base_optimizer = torch.optim.SGD(self.param_groups, lr=lr, momentum=momentum,
                                              weight_decay=weight_decay, nesterov=nesterov)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.bn_mode, self.exclude_bn_bias, self.perturbation, self.amp = bn_mode, exclude_bn_bias, perturbation, amp
        device_type = self.param_groups[0]["params"][0].device.type
        self.scaler = torch.amp.GradScaler(device_type, enabled=(amp == "fp16"))
        self._perturbed_cache = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Base SGD state (momentum buffers, param groups with lr and rho) and the loss scaler."""
        return {"base": self.base_optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        # torch replaces the base optimizer's param_groups list on load: share it again.
        self.param_groups = self.base_optimizer.param_groups
        if state_dict.get("scaler"):
            self.scaler.load_state_dict(state_dict["scaler"])

    # ------------------------------------------------------------------ pieces for subclasses
    def _params(self) -> List[torch.nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _perturbed(self, model: nn.Module) -> List[Tuple[torch.nn.Parameter, dict]]:
        """(parameter, its param group) for every parameter the perturbation moves."""
        if self._perturbed_cache is None:
            skip = set()
            if self.exclude_bn_bias:
                skip = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(False)}
                skip |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
            self._perturbed_cache = [(p, g) for g in self.param_groups for p in g["params"]
                                     if p.requires_grad and id(p) not in skip]
        return self._perturbed_cache

    def _autocast(self, device_type: str):
        dtype = AMP_DTYPES[self.amp]
        return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _forward(self, model, images, targets, criterion):
        """One forward pass: (logits, per-sample losses in full precision)."""
        with self._autocast(images.device.type):
            logits = model(images)
            losses = criterion(logits, targets)
        if losses.shape != targets.shape:
            raise ValueError(f"criterion must return per-sample losses of shape {tuple(targets.shape)}, "
                             f"got {tuple(losses.shape)} (use reduction='none')")
        return logits, full_precision(losses)

    @staticmethod
    def _ddp(model):
        return model if isinstance(model, DistributedDataParallel) else None

    def _no_sync(self, model):
        ddp = self._ddp(model)
        return ddp.no_sync() if ddp is not None else contextlib.nullcontext()

    def _sum_across_ranks(self, model, tensors: List[torch.Tensor]) -> None:
        ddp = self._ddp(model)
        if ddp is not None:
            all_reduce_sum_(tensors, ddp.process_group)

    @contextlib.contextmanager
    def _bn_guard(self, model):
        """With bn_mode="freeze", BN running statistics leave the perturbed pass unchanged.

        The pass runs on clones of the buffers, which are dropped afterwards. Restoring the
        originals in place instead would bump their version counters before the backward pass,
        which autograd rejects (batch norm's backward takes the running statistics as inputs).
        """
        if self.bn_mode != "freeze":
            yield
            return
        swapped = [(m, name, buf) for m in model.modules() if isinstance(m, _BatchNorm)
                   for name, buf in m._buffers.items() if buf is not None]
        for m, name, buf in swapped:
            m._buffers[name] = buf.clone()
        try:
            yield
        finally:
            for m, name, buf in swapped:
                m._buffers[name] = buf

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """fp16: the loss times the current loss scale (GradScaler.scale); else the loss."""
        return self.scaler.scale(loss) if self.scaler.is_enabled() else loss

    def _skip_nonfinite(self, params, scaled_grads) -> None:
        """fp16: hand non-finite gradients to the scaler, which skips the step and backs off."""
        for p, g in zip(params, scaled_grads):
            p.grad = g
        self.scaler.step(self.base_optimizer)
        self.scaler.update()

    def _finish(self, model) -> None:
        """Sum the final gradient across ranks once, then the base SGD step (through the scaler)."""
        self._sum_across_ranks(model, [p.grad for p in self._params() if p.grad is not None])
        if self.scaler.is_enabled():
            self.scaler.step(self.base_optimizer)
            self.scaler.update()
        else:
            self.base_optimizer.step()

    def _check_targets(self, targets: torch.Tensor, num_classes: int) -> None:
        if num_classes and targets.numel() and int(targets.max()) >= num_classes:
            raise ValueError(f"target {int(targets.max())} is out of range for {num_classes} classes "
                             f"(class_counts has {num_classes} entries)")
