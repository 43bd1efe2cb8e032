"""Flat parameter vectors, seeded random vectors and temporary weight shifts.

The spectral routines (eigen.py, trace.py, density.py) see a Hessian only as a function
v -> H v on flat 1-D tensors; these helpers move between that flat view and a model's list of
parameter tensors. Random vectors are drawn on the CPU from a `torch.Generator`, then moved to
the parameters' device, so one seed gives the same vectors on a CPU and on a GPU.
"""
import contextlib
from typing import Iterator, List, Optional, Sequence

import torch


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one 1-D vector (a copy, detached)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Split a 1-D vector into views shaped like `like` (no copy)."""
    sizes = [t.numel() for t in like]
    if flat.numel() != sum(sizes):
        raise ValueError(f"vector of length {flat.numel()} does not match {sum(sizes)} parameters")
    return [part.view_as(t) for part, t in zip(torch.split(flat, sizes), like)]


def rademacher(dim: int, generator: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(dim,) entries +1 or -1 with probability 1/2 each, drawn on the CPU."""
    return (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(device=device, dtype=dtype)


def gaussian(dim: int, generator: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(dim,) standard normal entries, drawn on the CPU in float64 then cast."""
    return torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed`."""
    return torch.Generator().manual_seed(int(seed))


@contextlib.contextmanager
def displaced(params: Sequence[torch.Tensor]) -> Iterator["Shifter"]:
    """Within the block, `shift(deltas)` sets every parameter to w0 + delta; w0 comes back on exit,
    whatever happens inside (an exception, Ctrl-C)."""
    origin = [p.detach().clone() for p in params]
    shifter = Shifter(params, origin)
    try:
        yield shifter
    finally:
        with torch.no_grad():
            for p, w in zip(params, origin):
                p.copy_(w)


class Shifter:
    def __init__(self, params: Sequence[torch.Tensor], origin: List[torch.Tensor]):
        self.params, self.origin = list(params), origin

    @torch.no_grad()
    def shift(self, deltas: Optional[Sequence[Optional[torch.Tensor]]]) -> None:
        """w = w0 + delta per tensor (None or a missing list: w0)."""
        for i, (p, w) in enumerate(zip(self.params, self.origin)):
            d = None if deltas is None else deltas[i]
            p.copy_(w if d is None else w + d.to(dtype=w.dtype, device=w.device))
