"""SGD, SAM, ImbSAM and Focal-SAM: one update with two per-class weight vectors.

For a batch of b samples with per-sample losses l_i and L_v(w) = (1/b) sum_i v[y_i] l_i(w):

    u   = grad L_c(w)                          # direction of the perturbation
    eps = rho * u / (||u||_2 + 1e-12)          # one norm over all perturbed parameters
    g   = grad L_a(w) + grad L_c(w + eps)      # handed to the base SGD step

`a` (clean part) and `c` (sharpness part) come from `optim.class_weights`: SGD a=1, c=0 (no
perturbation: one forward, one backward); SAM a=0, c=1 (2 fwd, 2 bwd); ImbSAM a = head mask,
c = tail mask (times `tail_weight`); Focal-SAM c = lam (1 - pi_k)^gamma, a = 1 - c (2 fwd,
3 bwd). Focal-SAM with gamma=0, lam=1 is SAM. grad L_a(w) and u come from ONE forward pass (two
backward passes through the same graph); the perturbed pass is the second forward. With
clean_backward="batched" those two backward passes are one: backward is linear in the per-sample
weights, so autograd.grad(l, w, grad_outputs=[a[y]/b; c[y]/b], is_grads_batched=True) gives both
gradients (vmap over the two weight rows), the same numbers as two passes. A batch whose sharpness
part is empty (ImbSAM with no tail sample) skips the perturbed pass: then g = grad L_a(w) exactly.

Under DDP (optim/base.py) u is the gradient of the GLOBAL batch by default; with
perturbation="local" each replica perturbs along its own gradient. g is summed across ranks once.

    opt = FocalSAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4,
                   rho=0.2, gamma=3.0, lam=0.5, class_counts=counts)
    loss, logits = opt.step(model, images, targets, nn.CrossEntropyLoss(reduction="none"))
"""
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch

from core.options import opt
from optim.base import PerturbOptions, SharpnessOptimizer, member_norms, members
from optim.class_weights import focal_sam_weights, imbsam_weights, sam_weights, sgd_weights


class WeightedSAM(SharpnessOptimizer):
    """The one update. `clean_weight` / `sharp_weight`: per-class vectors (C,) or scalars."""
    stackable = True

    def __init__(self, params, lr: float, clean_weight, sharp_weight, clean_backward: str = "separate", **kwargs):
        if clean_backward not in ("separate", "batched"):
            raise ValueError(f"clean_backward must be 'separate' or 'batched', got {clean_backward!r}")
        super().__init__(params, lr, **kwargs)
        self.clean_backward = clean_backward
        self.clean_weight = torch.as_tensor(clean_weight, dtype=torch.float64)
        self.sharp_weight = torch.as_tensor(sharp_weight, dtype=torch.float64)
        if self.clean_weight.shape != self.sharp_weight.shape or self.clean_weight.ndim > 1:
            raise ValueError("clean_weight and sharp_weight must be scalars or vectors of one length")
        self._targets_checked = False
        # Present in every batch (True), in none (False), or depending on the batch (None, ImbSAM):
        # a function of the fixed class weights, so decided once, not at every step.
        self._always = (_always_or_never(self.clean_weight), _always_or_never(self.sharp_weight))
        self._device_weights = {}

    def step(self, model, images, targets, criterion):
        """Every pass and the base update for one batch; returns (mean clean loss, clean logits)
        (stacked models: (N,) per-member mean losses)."""
        self._check_once(model, targets)
        self.zero_grad(set_to_none=True)
        with self.no_sync(model):
            logits, losses = self.forward(model, images, targets, criterion)         # l_i(w), (b,)
            a, c = (self._per_sample(k, targets, losses.dtype) for k in (0, 1))
            b, has_clean, has_sharp, skip = self._batch_plan(model, a, c)
            batched = has_sharp and has_clean and self.clean_backward == "batched"
            if batched:                    # grad L_a(w) into .grad and u from one backward
                params, eps = self.ascent_and_clean(model, losses, torch.stack([a, c]) / b)
            elif has_sharp:
                params, eps = self.ascent(model, (c * losses).sum() / b, keep_graph=has_clean)
            if has_sharp and eps is None:  # fp16: u overflowed, the scaler skipped this step
                return losses.detach().mean(-1), logits.detach()
            if has_clean and not batched:
                self.backward((a * losses).sum() / b)                                 # grad L_a(w)
            if has_sharp:
                with self.moved(model, params, eps, skip):
                    _, perturbed = self.forward(model, images, targets, criterion)    # l_i(w + eps)
                    self.backward((c * perturbed).sum() / b)                          # + grad L_c(w + eps)
        self.finish(model)
        return losses.detach().mean(-1), logits.detach()

    def ascent(self, model, sharp_loss: torch.Tensor, keep_graph: bool):
        """(perturbed params, eps = rho u / (||u|| + 1e-12)) with u = grad L_c(w); eps is None
        when the fp16 u overflowed."""
        params, rhos = self.perturbed(model)
        u = torch.autograd.grad(self.scaled(sharp_loss), params, retain_graph=keep_graph, allow_unused=True)
        u = [torch.zeros_like(p) if g is None else g for p, g in zip(params, u)]
        return params, self._radius_rho(model, params, rhos, u)

    def _radius_rho(self, model, params, rhos, u):
        """eps = rho u / (||u|| + 1e-12), u summed over the ranks first ("global") and unscaled
        (fp16); None when it overflowed (the scaler then skipped the step)."""
        if self.perturbation == "global":
            self.sum_across_ranks(model, u)
        if not self.unscaled_or_skip(params, u, model):
            return None
        n = members(model)
        if n:   # one norm per member, broadcast over each (N, ...) tensor
            scale = 1.0 / (member_norms(u) + 1e-12)
            return [g.mul_(rho * scale.view(n, *[1] * (g.dim() - 1))) for g, rho in zip(u, rhos)]
        norm = torch.nn.utils.get_total_norm(u)
        return [g.mul_(rho / (norm + 1e-12)) for g, rho in zip(u, rhos)]

    def ascent_and_clean(self, model, losses: torch.Tensor, weights: torch.Tensor):
        """`ascent` plus the clean gradient, from one batched backward: weights (2, b) holds
        a[y_i] / b and c[y_i] / b; row 0's gradient goes to .grad, row 1's is u."""
        params, rhos = self.perturbed(model)
        every = self.trainable()
        both = torch.autograd.grad(losses, every, grad_outputs=self.scaled(weights), is_grads_batched=True,
                                   allow_unused=True)
        by_id = {id(p): g for p, g in zip(every, both)}
        for p, g in zip(every, both):
            p.grad = None if g is None else g[0]
        u = [torch.zeros_like(p) if by_id.get(id(p)) is None else by_id[id(p)][1] for p in params]
        return params, self._radius_rho(model, params, rhos, u)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def capturable(self) -> bool:
        """No host sync in `step` (engine/capture.py): both parts are present in every batch or
        in none, so no batch needs a look (ImbSAM's does)."""
        return None not in self._always

    def _per_sample(self, part: int, targets: torch.Tensor, dtype) -> torch.Tensor:
        """Part 0 (clean) or 1 (sharpness) weight of each sample. The class weights are copied to
        the batch's device once: a host-to-device copy per step would be a sync point, and cannot
        be recorded in a CUDA graph."""
        key = (part, targets.device, dtype)
        w = self._device_weights.get(key)
        if w is None:
            w = self._device_weights[key] = (self.clean_weight, self.sharp_weight)[part].to(targets.device, dtype)
        return w.expand(targets.shape) if w.ndim == 0 else w[targets]

    def _batch_plan(self, model, a: torch.Tensor, c: torch.Tensor):
        """(global batch size, clean part present?, sharpness part present?, members to skip in
        the perturbed pass or None).

        A part whose class weights are all non-zero (or all zero) is present (absent) in every
        batch; only a part weighted on some classes (ImbSAM) needs a look at the batch, which
        costs a host sync. Under DDP the counts are summed over the ranks, so all agree. With
        stacked models a part is present if any member has it; the members without a sharpness
        part ride along in the perturbed pass with eps = 0 and weight 0 (a zero gradient) and
        `skip` keeps their BN statistics, so each member computes what it would alone.
        """
        known = self._always
        b = float(a.shape[-1])
        if self.ddp(model) is None and None not in known:
            return b, known[0], known[1], None
        if members(model):
            sharp = (c != 0).any(-1)
            has_sharp = bool(sharp.any()) if known[1] is None else known[1]
            skip = ~sharp if known[1] is None and has_sharp and not bool(sharp.all()) else None
            return b, True if known[0] is None else known[0], has_sharp, skip
        stats = torch.stack([torch.full_like(a[:1].sum(), b), (a != 0).sum().to(a.dtype), (c != 0).sum().to(a.dtype)])
        self.sum_across_ranks(model, [stats])
        has = [k if k is not None else bool(n > 0) for k, n in zip(known, stats[1:])]
        return stats[0], has[0], has[1], None

    def _check_once(self, model, targets: torch.Tensor) -> None:
        if not self._targets_checked:
            self.check_members(model)
            if self.clean_weight.ndim == 1:
                self.check_targets(targets, len(self.clean_weight))
        self._targets_checked = True


def _always_or_never(w: torch.Tensor) -> Optional[bool]:
    nonzero = w != 0
    return True if bool(nonzero.all()) else (False if not bool(nonzero.any()) else None)


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


@dataclass(frozen=True)
class TwoPartOptions(PerturbOptions):
    """Methods with both a clean and a sharpness part at w (ImbSAM, Focal-SAM)."""
    clean_backward: Literal["separate", "batched"] = opt(
        "separate", "grad L_a(w) and u: two backward passes, or one batched backward (same numbers)")


@dataclass(frozen=True)
class ImbSAMOptions(TwoPartOptions):
    eta: float = opt(100.0, "ImbSAM: tail = classes with n_k <= eta (see docs/reproduce.md for the per-IF rule)")
    tail_weight: float = opt(1.0, "ImbSAM: factor on the tail loss; 1 = its paper (Alg. 1), 2 = its public code "
                                  "(cool-xuan/Imbalanced_SAM utils/trainval.py)")


class ImbSAM(WeightedSAM):
    """ImbSAM (Zhou et al. ICCV 2023): SAM on the tail classes (n_k <= eta) only, SGD on the rest;
    `tail_weight` scales the tail loss (2 in ImbSAM's public code, 1 in its paper)."""

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.05, eta: float = 100.0,
                 tail_weight: float = 1.0, **kwargs):
        a, c = imbsam_weights(class_counts, eta, tail_weight)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)


@dataclass(frozen=True)
class FocalSAMOptions(TwoPartOptions):
    gamma: float = opt(2.0, "Focal-SAM: focusing exponent on (1 - pi_k), >= 0")
    lam: float = opt(1.0, "Focal-SAM: sharpness weight lambda, >= 0 (the official iNaturalist run uses 1.1)")


class FocalSAM(WeightedSAM):
    """Focal-SAM (Li et al. ICML 2025): sharpness weighted by lam * (1 - pi_k)^gamma per class."""

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.05, gamma: float = 2.0,
                 lam: float = 1.0, **kwargs):
        a, c = focal_sam_weights(class_counts, gamma, lam)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)
