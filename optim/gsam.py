"""GSAM (Zhuang et al. ICLR 2022, "Surrogate Gap Guided Sharpness-Aware Minimization", Alg. 1).

SAM minimises the perturbed loss f_p(w) = f(w + eps); GSAM also lowers the surrogate gap
h = f_p - f without changing f_p to first order, by an ascent on f along the part of grad f(w)
orthogonal to grad f_p:

    u     = grad f(w),  eps = rule(u)                          # SAM's ascent (any rule that reads u)
    g_p   = grad f_p(w) = grad f(w + eps)
    u_perp = u - (<u, g_p> / ||g_p||^2) g_p                    # Eq. 5's vertical component
    g     = g_p - alpha u_perp                                 # handed to the base SGD step

and a radius tied to the learning rate, rho_t = rho_min + (rho - rho_min) lr_t / lr_max
(`GSAMOptions.group_values`, optim/schedules.py `proportional_rho`). alpha = 0 and rho_min = rho
reduce GSAM to SAM, as big_vision's gsam.py says.

It is the weighted step of optim/sharpness.py with the correction applied to the final gradient,
so it composes with the weighting: f = L_c, f_p = L_a(w) + L_c(w + eps) (SAM's a = 0, c = 1 by
default; the library takes `clean_weight` / `sharp_weight`, e.g. Focal-SAM's, where h is the
weighted gap L_c(w + eps) - L_c(w) and u_perp is orthogonal to the whole step). A rule that reads
no gradient (random) leaves no u, and is refused.

Under DDP with perturbation="global" u and g_p are the global batch's (the correction after the
gradient sum); with "local" each replica corrects its own (the official code's per-worker
decomposition), then the corrected gradients are summed.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence, Tuple

import torch

from core.options import opt, require
from optim.base import ALPHA_DOC
from optim.members import broadcast, total_dot, total_norm
from optim.perturbations import KeepAscent, RuleOptions
from optim.schedules import proportional_rho
from optim.sharpness import WeightedSAM


def check_gsam(alpha: float, perturb: str) -> None:
    require("alpha", alpha >= 0, "must be >= 0 (GSAM: weight of the surrogate-gap ascent)", alpha)
    require("perturb", perturb != "random", "random reads no gradient at w; GSAM needs it (sam, asam or friendly)",
            perturb)


@dataclass(frozen=True)
class GSAMOptions(RuleOptions):
    alpha: float = opt(0.4, ALPHA_DOC)
    rho_min: float = opt(0.0, "gsam: the radius as the lr falls to 0; rho is the radius at the peak lr (rho_max)")
    schedule_keys: ClassVar[Tuple[str, ...]] = ("rho_milestones", "rho_min")

    def check(self) -> None:
        super().check()
        check_gsam(self.alpha, self.perturb)
        require("rho_min", 0 <= self.rho_min <= self.rho, f"must be in [0, rho={self.rho}]", self.rho_min)
        require("rho_milestones", not self.rho_milestones,
                "cannot be used with gsam, whose radius follows the lr (rho, rho_min); remove it", self.rho_milestones)

    def group_values(self, lrs: Sequence[float]):
        return [{"rho": rho} for rho in proportional_rho(lrs, self.rho, self.rho_min)]


class GSAM(WeightedSAM):
    """GSAM behind `step(model, images, targets, criterion)`. The lr-tied radius is the engine's
    per-epoch schedule; in your own loop set each group's `rho` (optim.schedules.proportional_rho)."""

    def __init__(self, params, lr: float, rho: float = 0.05, alpha: float = 0.4,
                 class_counts: Optional[Sequence] = None, clean_weight=0.0, sharp_weight=1.0, **kwargs):
        check_gsam(alpha, kwargs.get("perturb", "sam"))
        if class_counts is not None:
            clean_weight, sharp_weight = (torch.as_tensor(w, dtype=torch.float64).expand(len(class_counts))
                                          for w in (clean_weight, sharp_weight))
        super().__init__(params, lr, clean_weight, sharp_weight, rho=rho, **kwargs)
        self.alpha = alpha
        self.rule = KeepAscent(self.rule)

    def step(self, model, images, targets, criterion):
        self.rule.u = None                      # set by the ascent of this step, if it runs
        return super().step(model, images, targets, criterion)

    def finish(self, model) -> None:
        """The correction on the global gradient (or each replica's own, perturbation="local"),
        the sum across ranks, the base step."""
        if self.perturbation == "local":
            self.surrogate_gap_ascent(model)
        self.sum_gradients(model)
        if self.perturbation == "global":
            self.surrogate_gap_ascent(model)
        self.base_step()

    def surrogate_gap_ascent(self, model) -> None:
        """.grad = g_p - alpha u_perp over the perturbed parameters (Alg. 1, lines 7-8). .grad
        carries the fp16 loss scale and u does not: u_perp is scaled to match."""
        u = self.rule.u
        if u is None:
            return
        params = self.perturbed(model)[0]
        g = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        coef = total_dot(u, g, model) / (total_norm(g, model) + 1e-12) ** 2      # <u, g_p> / ||g_p||^2
        scale = self.alpha * (self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
        for p, gi, ui in zip(params, g, u):
            gi.sub_(ui - broadcast(coef, gi) * gi, alpha=scale)     # g_p - alpha (u - proj_{g_p} u)
            p.grad = gi
