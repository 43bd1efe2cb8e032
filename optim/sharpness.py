"""SGD, SAM, ImbSAM and Focal-SAM: one algorithm with two per-class weight vectors.

For a batch of b samples with per-sample losses l_i and L_v(w) = (1/b) sum_i v[y_i] l_i(w):

    u   = grad L_c(w)                          # direction of the perturbation
    eps = rho * u / (||u||_2 + 1e-12)          # one norm over all perturbed parameters
    g   = grad L_a(w) + grad L_c(w + eps)      # handed to the base SGD step

`a` (clean part) and `c` (sharpness part) come from `optim.class_weights`: SGD a=1, c=0 (no
perturbation: one forward, one backward); SAM a=0, c=1 (2 fwd, 2 bwd); ImbSAM a = head mask,
c = tail mask; Focal-SAM c = lam (1 - pi_k)^gamma, a = 1 - c (2 fwd, 3 bwd). Focal-SAM with
gamma=0, lam=1 reduces to SAM. The clean gradient grad L_a(w) and u = grad L_c(w) come from ONE
forward pass (two backward passes through the same graph); the perturbed pass is the second
forward. A batch whose sharpness part is empty (ImbSAM with no tail sample) skips the perturbed
pass: then L_c = 0 and g = grad L_a(w) exactly.

Use in your own loop:

    opt = FocalSAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4,
                   rho=0.2, gamma=3.0, lam=0.5, class_counts=counts)
    for images, targets in loader:
        loss, logits = opt.step(model, images, targets, nn.CrossEntropyLoss(reduction="none"))
"""
from typing import Optional, Sequence

import torch

from optim.base import SharpnessOptimizer
from optim.class_weights import focal_sam_weights, imbsam_weights, sam_weights, sgd_weights


class WeightedSAM(SharpnessOptimizer):
    """The one algorithm. `clean_weight` / `sharp_weight`: per-class vectors (C,) or scalars.

    Under DDP (see optim/base.py) u is the gradient of the GLOBAL batch by default
    (`perturbation="global"`); with "local" each replica perturbs along its own gradient. The
    final gradient g is summed across ranks once.
    """

    def __init__(self, params, lr: float, clean_weight, sharp_weight, **kwargs):
        super().__init__(params, lr, **kwargs)
        self.clean_weight = torch.as_tensor(clean_weight, dtype=torch.float64)
        self.sharp_weight = torch.as_tensor(sharp_weight, dtype=torch.float64)
        if self.clean_weight.shape != self.sharp_weight.shape or self.clean_weight.ndim > 1:
            raise ValueError("clean_weight and sharp_weight must be scalars or vectors of one length")
        # Whether each part is never / always / sometimes present in a batch, known from the
        # class vectors: only "sometimes" needs a per-batch look at the targets.
        self._clean_mode = self._presence(self.clean_weight)
        self._sharp_mode = self._presence(self.sharp_weight)
        self._checked_targets = False

    @staticmethod
    def _presence(w: torch.Tensor) -> str:
        nonzero = w != 0
        return "always" if bool(nonzero.all()) else ("never" if not bool(nonzero.any()) else "sometimes")

    def _per_sample(self, w: torch.Tensor, targets: torch.Tensor, dtype) -> torch.Tensor:
        w = w.to(device=targets.device, dtype=dtype)
        return w.expand(targets.shape) if w.ndim == 0 else w[targets]

    def _plan(self, model, a: torch.Tensor, c: torch.Tensor):
        """(global batch size, clean part present, sharpness part present) for this batch."""
        total, needs = float(a.numel()), {}
        if self._ddp(model) is not None or "sometimes" in (self._clean_mode, self._sharp_mode):
            stats = torch.stack([torch.ones_like(a).sum(), (a != 0).sum().to(a.dtype), (c != 0).sum().to(a.dtype)])
            self._sum_across_ranks(model, [stats])
            total = stats[0]
            needs = {"clean": stats[1], "sharp": stats[2]}
        present = lambda mode, key: mode == "always" or (mode == "sometimes" and bool(needs[key] > 0))
        return total, present(self._clean_mode, "clean"), present(self._sharp_mode, "sharp")

    def step(self, model, images, targets, criterion):
        """Every pass and the base update for one batch; returns (mean clean loss, clean logits)."""
        if not self._checked_targets and self.clean_weight.ndim == 1:
            self._check_targets(targets, len(self.clean_weight))
            self._checked_targets = True
        self.zero_grad(set_to_none=True)
        with self._no_sync(model):
            logits, losses = self._forward(model, images, targets, criterion)
            a = self._per_sample(self.clean_weight, targets, losses.dtype)
            c = self._per_sample(self.sharp_weight, targets, losses.dtype)
            total, need_clean, need_sharp = self._plan(model, a, c)
            eps = None
            if need_sharp:
                eps = self._perturbation(model, self._scaled((c * losses).sum() / total), retain=need_clean)
                if eps is None:  # fp16 overflow in u: the scaler skipped the step
                    return losses.detach().mean(), logits.detach()
            if need_clean:
                self._scaled((a * losses).sum() / total).backward()
            if need_sharp:
                self._perturbed_backward(model, images, targets, criterion, c, total, eps)
        self._finish(model)
        return losses.detach().mean(), logits.detach()

    def _perturbation(self, model, scaled_sharp_loss, retain: bool):
        """eps = rho * u / (||u|| + 1e-12), u = grad L_c(w); None when fp16 u overflowed."""
        pairs = self._perturbed(model)
        params = [p for p, _ in pairs]
        u = torch.autograd.grad(scaled_sharp_loss, params, retain_graph=retain, allow_unused=True)
        u = [torch.zeros_like(p) if g is None else g for p, g in zip(params, u)]
        if self.perturbation == "global":
            self._sum_across_ranks(model, u)
        if self.scaler.is_enabled():
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u)))
            bad = (~torch.isfinite(norm)).float().reshape(1)
            if self.perturbation == "local":  # every rank must agree to skip
                self._sum_across_ranks(model, [bad])
            if bool(bad.item()):
                self._skip_nonfinite(params, u)
                return None
            torch._foreach_mul_(u, 1.0 / self.scaler.get_scale())
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u)))
        for (_, group), g in zip(pairs, u):
            g.mul_(group["rho"] / (norm + 1e-12))
        return u

    def _perturbed_backward(self, model, images, targets, criterion, c, total, eps) -> None:
        """Accumulate grad L_c(w + eps) into .grad, then put the weights back exactly."""
        params = [p for p, _ in self._perturbed(model)]
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            torch._foreach_add_(params, eps)
        with self._bn_guard(model):
            _, losses = self._forward(model, images, targets, criterion)
        self._scaled((c * losses).sum() / total).backward()
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


class SGD(WeightedSAM):
    """Plain SGD behind the same `step(model, images, targets, criterion)` interface."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, amp: str = "none", class_counts: Optional[Sequence] = None, **kwargs):
        a, c = sgd_weights(len(class_counts)) if class_counts is not None else (1.0, 0.0)
        super().__init__(params, lr, a, c, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov, amp=amp, rho=0.0, **kwargs)


class SAM(WeightedSAM):
    """SAM (Foret et al. ICLR 2021): a = 0, c = 1. `class_counts` is optional (only checks targets)."""

    def __init__(self, params, lr: float, rho: float = 0.05, class_counts: Optional[Sequence] = None, **kwargs):
        a, c = sam_weights(len(class_counts)) if class_counts is not None else (0.0, 1.0)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)


class ImbSAM(WeightedSAM):
    """ImbSAM (Zhou et al. ICCV 2023): SAM on the tail classes (n_k <= eta) only, SGD on the rest."""

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.05, eta: float = 100.0, **kwargs):
        a, c = imbsam_weights(class_counts, eta)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)


class FocalSAM(WeightedSAM):
    """Focal-SAM (Li et al. ICML 2025): sharpness weighted by lam * (1 - pi_k)^gamma per class."""

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.05, gamma: float = 2.0,
                 lam: float = 1.0, **kwargs):
        a, c = focal_sam_weights(class_counts, gamma, lam)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)
