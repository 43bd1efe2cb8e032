"""What a sharpness step does differently when `model` is N models stacked into one
(models/stacked.py: every tensor (N, ...), images (N, B, ...), targets (N, B)).

Each member's slice of a parameter gets exactly that member's gradient from a sum of per-member
losses, and any elementwise operation (SGD with momentum and weight decay) updates each member as
if it ran alone. What is not elementwise is taken per member here: the criterion (a loss may
normalise over its batch), the norm of the perturbation direction, and which members skip a
perturbed pass (their BatchNorm statistics must not see it). The optimizers call these helpers;
with one model every helper is the plain computation.
"""
from typing import Optional, Sequence

import torch


def members(model) -> int:
    """N for a stacked model (also behind torch.compile), 0 for one model."""
    return int(getattr(model, "members", 0) or 0)


def per_sample_losses(criterion, logits: torch.Tensor, targets: torch.Tensor, model) -> torch.Tensor:
    """criterion(logits, targets), one call per member of a stacked model: (B,) or (N, B)."""
    if members(model):
        return torch.stack([criterion(z, y) for z, y in zip(logits, targets)])
    return criterion(logits, targets)


def member_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N,) the 2-norm of each member's slice over all `tensors` (each (N, ...)): the norm of the
    per-tensor norms, as torch.nn.utils.get_total_norm takes it for one model."""
    per_tensor = torch.stack([torch.linalg.vector_norm(t.flatten(1), dim=1) for t in tensors])
    return torch.linalg.vector_norm(per_tensor, dim=0)


def total_norm(tensors: Sequence[torch.Tensor], model) -> torch.Tensor:
    """||tensors||_2 over all of them: a scalar, or (N,) per member of a stacked model."""
    return member_norms(tensors) if members(model) else torch.nn.utils.get_total_norm(tensors)


def total_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], model) -> torch.Tensor:
    """<a, b> over all the tensors (a[i] paired with b[i]): a scalar, or (N,) per member."""
    if members(model):
        return torch.stack([(x * y).flatten(1).sum(1) for x, y in zip(a, b)]).sum(0)
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def broadcast(factor: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A scalar factor as it is; a per-member one (N,) shaped to multiply t (N, ...)."""
    return factor.view(-1, *[1] * (t.dim() - 1)) if factor.dim() else factor


def sharp_members(c: torch.Tensor) -> torch.Tensor:
    """(N,) which members have a sample with a non-zero sharpness weight in the batch (c (N, B))."""
    return (c != 0).any(-1)


def keep_skipped(before: torch.Tensor, after: torch.Tensor, skip: Optional[torch.Tensor]) -> torch.Tensor:
    """A BatchNorm buffer after a pass: the skipped members' slices as they were before it."""
    if skip is None:
        return after
    return torch.where(skip.to(after.device).view(-1, *[1] * (after.dim() - 1)), before, after)
