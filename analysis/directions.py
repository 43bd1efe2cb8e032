"""Filter-normalised random directions (Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss
Landscape of Neural Nets", NeurIPS 2018).

A Gaussian direction d is rescaled filter by filter so that each filter of d has the norm of the
same filter of the weights w: d_i <- d_i / ||d_i|| * ||w_i||, a filter being a slice along the
first dimension (a convolution's output channel, a linear layer's row). Plots along such
directions are comparable between networks whose weights differ in scale (BatchNorm makes a
filter's scale meaningless). One-dimensional tensors (biases, BatchNorm affine parameters) get a
zero direction by default, as in the paper's plots; `one_d="filter"` treats each of their entries
as a filter of its own (d_i = sign(d_i) |w_i|).
"""
from typing import List, Sequence

import torch

from analysis.params import gaussian

ONE_D = ("zero", "filter")


def filter_normalize(direction: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                     one_d: str = "zero") -> List[torch.Tensor]:
    """A copy of `direction` with each filter scaled to the norm of the matching filter of `params`."""
    if one_d not in ONE_D:
        raise ValueError(f"one_d must be one of {ONE_D}, got {one_d!r}")
    out = []
    for d, w in zip(direction, params):
        w = w.detach()
        if d.shape != w.shape:
            raise ValueError(f"direction shape {tuple(d.shape)} does not match parameter {tuple(w.shape)}")
        if w.dim() <= 1 and one_d == "zero":
            out.append(torch.zeros_like(w))
            continue
        d2 = d.reshape(len(d), -1) if d.dim() >= 1 else d.reshape(1, 1)
        w2 = w.reshape(len(w), -1) if w.dim() >= 1 else w.reshape(1, 1)
        scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + 1e-10)
        out.append((d2 * scale).reshape(w.shape))
    return out


def random_direction(params: Sequence[torch.Tensor], generator: torch.Generator, one_d: str = "zero") -> List[torch.Tensor]:
    """A seeded Gaussian direction (drawn on the CPU, same on any device), filter-normalised."""
    raw = [gaussian(p.numel(), generator, p.dtype, p.device).view_as(p) for p in params]
    return filter_normalize(raw, params, one_d)
