"""LookSAM (Liu et al. CVPR 2022, "Towards Efficient and Scalable Sharpness-Aware Minimization",
Alg. 1): SAM's extra pass only every k steps, its "flat-region" component reused in between.

    every k-th step (t mod k = 0):                             # 2 forward, 2 backward
        g   = grad L(w),  eps = rule(g)
        g_s = grad L(w + eps)                                  # handed to the base SGD step
        g_v = g_s - (<g_s, g> / ||g||^2) g                     # stored: g_s's part orthogonal to g
    the k - 1 steps in between:                                # 1 forward, 1 backward
        g_s = g + alpha (||g|| / ||g_v||) g_v                  # handed to the base SGD step

Norms and inner products are over all perturbed parameters (the paper's vectors), per member for
a stacked model. k = 1 is SAM. There is no official code (the paper's Algorithm is followed; the
layer-wise Look-LayerSAM variant for large batches is not included).

The stored g_v and the step count are optimizer state (`state_dict`): a resumed run continues
the same k-cycle with the same g_v. The perturbation may be any rule that reads the gradient (sam,
asam, friendly; F-SAM's EMA then sees the k-th steps' gradients only). LookSAM uses SAM's loss
only (no per-class weighting): with a clean part L_a the cheap step would need the gradient of
L_c by itself, a second backward pass at every step, which is the cost LookSAM removes. Under DDP
the gradients are those of the global batch (perturbation="global" only: one stored g_v for all).
Which passes run depends on the step count, so one CUDA graph cannot replay it (capturable False).
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from core.options import opt, require
from optim.base import ALPHA_DOC, SharpnessOptimizer
from optim.members import broadcast, total_dot, total_norm
from optim.perturbations import KeepAscent, RuleOptions, build_rule, pop_rule_options


def check_looksam(alpha: float, k: int, perturb: str, perturbation: str) -> None:
    require("alpha", alpha >= 0, "must be >= 0 (LookSAM: weight of the reused component)", alpha)
    require("k", k >= 1, "must be >= 1 (LookSAM: the perturbed pass every k steps)", k)
    require("perturb", perturb != "random", "random reads no gradient at w; LookSAM needs it (sam, asam or friendly)",
            perturb)
    require("perturbation", perturbation == "global", "must be global for looksam (one stored g_v for all replicas)",
            perturbation)


@dataclass(frozen=True)
class LookSAMOptions(RuleOptions):
    alpha: float = opt(0.7, ALPHA_DOC)
    k: int = opt(5, "looksam: the perturbed pass every k steps, the stored direction reused in between (1 = SAM)")

    def check(self) -> None:
        super().check()
        check_looksam(self.alpha, self.k, self.perturb, self.perturbation)


class LookSAM(SharpnessOptimizer):
    stackable = True
    capturable = False

    def __init__(self, params, lr: float, rho: float = 0.05, alpha: float = 0.7, k: int = 5,
                 class_counts: Optional[Sequence] = None, perturb: str = "sam", **kwargs):
        check_looksam(alpha, k, perturb, kwargs.get("perturbation", "global"))
        rule = build_rule(perturb, **pop_rule_options(kwargs))
        super().__init__(params, lr, rho=rho, **kwargs)
        self.rule, self.alpha, self.k = KeepAscent(rule), alpha, k
        self.num_classes = len(class_counts) if class_counts is not None else None
        self.steps, self.g_v = 0, None

    def step(self, model, images, targets, criterion):
        """One step of Alg. 1; returns (mean loss at w, logits at w), per member (N,) if stacked."""
        self.start_step(model, targets, self.num_classes)
        params, rhos = self.perturbed(model)
        look = self.steps % self.k == 0 or self.g_v is None
        self.steps += 1
        with self.no_sync(model):
            logits, losses = self.forward(model, images, targets, criterion)             # l_i(w)
            b = self.global_batch_size(model, targets)
            if not look:
                self.backward(losses.sum() / b)                                           # g = grad L(w)
            elif not self.perturbed_pass(model, images, targets, criterion, params, rhos, losses, b):
                return losses.detach().mean(-1), logits.detach()                          # fp16: skipped
        self.sum_gradients(model)
        g = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        if look:
            self.store_orthogonal(model, g)
        else:
            self.reuse(model, params, g)
        self.base_step()
        return losses.detach().mean(-1), logits.detach()

    def perturbed_pass(self, model, images, targets, criterion, params, rhos, losses, b) -> bool:
        """.grad = g_s = grad L(w + eps); False when the fp16 g overflowed (the step was skipped)."""
        u = self.gradient(losses.sum() / b, params, keep_graph=False)                   # g = grad L(w)
        eps = self.perturb(model, params, rhos, u, self.rule)
        if eps is None:
            return False
        with self.moved(model, params, eps):
            _, perturbed = self.forward(model, images, targets, criterion)              # l_i(w + eps)
            self.backward(perturbed.sum() / b)                                            # g_s
        return True

    def store_orthogonal(self, model, g_s) -> None:
        """g_v = g_s - (<g_s, g> / ||g||^2) g (only its direction is used: the fp16 scale of g_s
        does not matter); a non-finite one (an fp16 step the scaler skips) is not stored."""
        g = self.rule.u
        coef = total_dot(g_s, g, model) / (total_norm(g, model) + 1e-12) ** 2
        g_v = [s - broadcast(coef, s) * gi for s, gi in zip(g_s, g)]
        if self.scaler.is_enabled() and not bool(torch.isfinite(total_norm(g_v, model)).all()):
            return
        self.g_v = g_v

    def reuse(self, model, params, g) -> None:
        """.grad = g + alpha (||g|| / ||g_v||) g_v (||g|| carries the fp16 scale, as .grad does)."""
        g_v = self.g_v = [v.to(p) for v, p in zip(self.g_v, params)]     # a loaded state onto the device
        factor = self.alpha * total_norm(g, model) / (total_norm(g_v, model) + 1e-12)
        for p, gi, v in zip(params, g, g_v):
            p.grad = gi.add_(broadcast(factor, v) * v)

    def state_dict(self) -> dict:
        g_v = {} if self.g_v is None else {str(i): v for i, v in enumerate(self.g_v)}
        return {**super().state_dict(), "steps": self.steps, "g_v": g_v, "rule": self.rule.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        g_v = state_dict.get("g_v") or {}
        self.steps = int(state_dict.get("steps", 0))
        self.g_v = [g_v[str(i)].clone() for i in range(len(g_v))] or None
        self.rule.load_state_dict(state_dict.get("rule", {}))
