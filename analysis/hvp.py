"""A loss averaged over fixed batches, with its gradient and Hessian-vector products.

    L(w) = (1/N) sum_i l_i(w)         over all N samples of the batches

The Hessian is never formed: H v comes from differentiating (grad L(w)) . v once more (Pearlmutter
1994), batch by batch, each batch's share weighted by its size / N, so the product is that of
the whole subset whatever the batch size. Memory: one batch's double-backward graph at a time.
"""
from typing import Callable, List, Sequence

import torch

from analysis.params import flatten


class BatchedLoss:
    """`per_sample(batch) -> (b,)` per-sample losses at the current parameters; the batch size b
    is read from the output. `params`: the tensors to differentiate (requires_grad)."""

    def __init__(self, params: Sequence[torch.Tensor], batches: Sequence, per_sample: Callable[[object], torch.Tensor]):
        self.params = list(params)
        self.batches = list(batches)
        self.per_sample = per_sample
        self.dim = sum(p.numel() for p in self.params)
        if not self.batches:
            raise ValueError("BatchedLoss needs at least one batch")
        self._total = None

    @property
    def total(self) -> int:
        """N, the number of samples (one forward pass per batch, counted once)."""
        if self._total is None:
            with torch.no_grad():
                self._total = sum(int(self.per_sample(b).numel()) for b in self.batches)
        return self._total

    @torch.no_grad()
    def value(self) -> float:
        return float(sum(self.per_sample(b).double().sum() for b in self.batches)) / self.total

    def gradient(self) -> torch.Tensor:
        """grad L(w) as a flat vector."""
        acc = [torch.zeros_like(p) for p in self.params]
        for b in self.batches:
            loss = self.per_sample(b).sum() / self.total
            for a, g in zip(acc, self._grads(loss, create_graph=False)):
                a.add_(g)
        return flatten(acc)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (same dtype and device as the parameters)."""
        parts = [part.view_as(p) for part, p in zip(torch.split(v, [p.numel() for p in self.params]), self.params)]
        acc = [torch.zeros_like(p) for p in self.params]
        for b in self.batches:
            loss = self.per_sample(b).sum() / self.total
            grads = self._grads(loss, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, parts) if g.requires_grad)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue  # the loss is linear in every parameter on this batch: H v = 0 here
            for a, h in zip(acc, self._grads(dot, create_graph=False)):
                a.add_(h)
        return flatten(acc)

    def _grads(self, scalar: torch.Tensor, create_graph: bool) -> List[torch.Tensor]:
        grads = torch.autograd.grad(scalar, self.params, create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]
