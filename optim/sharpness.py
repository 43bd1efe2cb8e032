"""SGD, SAM, ImbSAM, Focal-SAM and m-RWP: one update with two per-class weight vectors.

For a batch of b samples with per-sample losses l_i and L_v(w) = (1/b) sum_i v[y_i] l_i(w):

    u   = grad L_c(w)                          # direction of the perturbation
    eps = rho * u / (||u||_2 + 1e-12)          # one norm over all perturbed parameters
    g   = grad L_a(w) + grad L_c(w + eps)      # handed to the base SGD step

`a` (clean part) and `c` (sharpness part) come from `optim.class_weights`: SGD a=1, c=0 (no
perturbation: one forward, one backward); SAM a=0, c=1 (2 fwd, 2 bwd); ImbSAM a = head mask,
c = tail mask (times `tail_weight`); Focal-SAM c = lam (1 - pi_k)^gamma, a = 1 - c (2 fwd,
3 bwd); m-RWP c = alpha, a = 1 - alpha for every class, with the `random` rule below. Focal-SAM
with gamma=0, lam=1 is SAM (with gamma=0, lam=alpha, perturb=random it is m-RWP). grad L_a(w)
and u come from ONE forward pass (two backward passes through the same graph); the perturbed
pass is the second forward. With
clean_backward="batched" those two backward passes are one: backward is linear in the per-sample
weights, so autograd.grad(l, w, grad_outputs=[a[y]/b; c[y]/b], is_grads_batched=True) gives both
gradients (vmap over the two weight rows), the same numbers as two passes. A batch whose sharpness
part is empty (ImbSAM with no tail sample) skips the perturbed pass: then g = grad L_a(w) exactly.

Under DDP (optim/base.py) u is the gradient of the GLOBAL batch by default; with
perturbation="local" each replica perturbs along its own gradient. g is summed across ranks once.

eps = rho u / ||u|| is the `sam` perturbation rule; `perturb` picks another (optim/perturbations.py:
asam, friendly, random), which leaves the weighting above as it is; a rule that reads no gradient
(random) skips the ascent backward pass. The plumbing (fp16 loss scaling, DDP sums, stacked
models, BatchNorm in the perturbed pass) sits in named helpers of optim/base.py and
optim/members.py; the class below is the update itself.

    opt = FocalSAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4,
                   rho=0.2, gamma=3.0, lam=0.5, class_counts=counts)
    loss, logits = opt.step(model, images, targets, nn.CrossEntropyLoss(reduction="none"))
"""
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch

from core.options import opt
from optim.base import ALPHA_DOC, PerturbOptions, SharpnessOptimizer, check_choice
from optim.class_weights import (ClassWeights, check_focal_sam, check_imbsam, check_mixing, focal_sam_weights,
                                 imbsam_weights, mixed_weights, sam_weights, sgd_weights)
from optim.members import members, sharp_members
from optim.perturbations import RuleOptions, build_rule, check_rule_mode, pop_rule_options


class WeightedSAM(SharpnessOptimizer):
    """The one update: Focal-SAM's Algorithm 1 with per-class weights a (clean part) and c
    (sharpness part) of any of the methods above. `clean_weight` / `sharp_weight`: vectors (C,) or
    scalars; `perturb` and its options (`asam_eta`, ...): the rule (optim/perturbations.py)."""
    stackable = True

    def __init__(self, params, lr: float, clean_weight, sharp_weight, clean_backward: str = "separate",
                 perturb: str = "sam", **kwargs):
        check_choice("clean_backward", clean_backward, ("separate", "batched"))
        rule = build_rule(perturb, **pop_rule_options(kwargs))
        super().__init__(params, lr, **kwargs)
        check_rule_mode(perturb, self.perturbation)
        self.weights = ClassWeights(clean_weight, sharp_weight)
        self.rule = rule
        self.batched = clean_backward == "batched"

    @property
    def capturable(self) -> bool:
        """No host sync in `step` (engine/capture.py)."""
        return self.rule.capturable

    def step(self, model, images, targets, criterion):
        """Every pass and the base update for one batch (Alg. 1, lines 4-8); returns (mean clean
        loss, clean logits), per member (N,) for stacked models."""
        self.start_step(model, targets, self.weights.num_classes)
        with self.no_sync(model):
            logits, losses = self.forward(model, images, targets, criterion)          # l_i(w)      (line 4)
            a, c = self.weights.per_sample(targets, losses.dtype)                      # a[y_i], c[y_i]
            b, clean, sharp, skip = self.parts(model, a, c)                            # which of L_a, L_c the batch has
            if sharp:
                params, rhos = self.perturbed(model)
                u = self.ascent_gradient(params, losses, a, c, b, clean) if self.rule.needs_gradient else None
                eps = self.perturb(model, params, rhos, u, self.rule, skip)  # rho u / ||u||, Eq. 7  (line 5)
                if eps is None:                                      # fp16: u overflowed, the scaler skipped the step
                    return losses.detach().mean(-1), logits.detach()
            if clean and not (sharp and self.batched and u is not None):
                self.backward((a * losses).sum() / b)                # g2 = grad L_a(w), L_a = L - lam L^gamma (line 7)
            if sharp:
                with self.moved(model, params, eps, skip):
                    _, perturbed = self.forward(model, images, targets, criterion)    # l_i(w + eps)
                    self.backward((c * perturbed).sum() / b)         # + lam g1 = grad L_c(w + eps), Eq. 8 (line 6)
        self.finish(model)                                           # w -= lr (lam g1 + g2), momentum, wd (line 8)
        return losses.detach().mean(-1), logits.detach()

    def ascent_gradient(self, params, losses, a, c, b, keep_graph: bool):
        """u = grad L_c(w) (Eq. 7's direction). With clean_backward="batched" one backward gives
        both gradients at w: u, and grad L_a(w) into .grad (backward is linear in the weights)."""
        if self.batched and keep_graph:
            return self.gradients_batched(losses, torch.stack([a, c]) / b, params)
        return self.gradient((c * losses).sum() / b, params, keep_graph)

    def parts(self, model, a: torch.Tensor, c: torch.Tensor):
        """(global batch size b, clean part present?, sharpness part present?, members whose
        perturbed pass is skipped): fixed by the class weights; ImbSAM looks at each batch."""
        return self.global_batch_size(model, a), self.weights.clean, self.weights.sharp, None

    def state_dict(self) -> dict:
        """The base state and the rule's (F-SAM's EMA, the random rule's count)."""
        return {**super().state_dict(), "rule": self.rule.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.rule.load_state_dict(state_dict.get("rule", {}))


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
class TwoPartOptions(RuleOptions):
    """Methods with both a clean and a sharpness part at w (ImbSAM, Focal-SAM)."""
    clean_backward: Literal["separate", "batched"] = opt(
        "separate", "grad L_a(w) and u: two backward passes, or one batched backward (same numbers)")

    def why_not_compiled(self) -> str:
        # vmap over a compiled backward has no batching rule (torch 2.14: aten::mm.out)
        return "optim.clean_backward=batched" if self.clean_backward == "batched" else ""


@dataclass(frozen=True)
class ImbSAMOptions(TwoPartOptions):
    eta: float = opt(100.0, "ImbSAM: tail = classes with n_k <= eta (see docs/reproduce.md for the per-IF rule)")
    tail_weight: float = opt(1.0, "ImbSAM: factor on the tail loss; 1 = its paper (Alg. 1), 2 = its public code "
                                  "(cool-xuan/Imbalanced_SAM utils/trainval.py)")

    def check(self) -> None:
        super().check()
        check_imbsam(self.eta, self.tail_weight)


class ImbSAM(WeightedSAM):
    """ImbSAM (Zhou et al. ICCV 2023): SAM on the tail classes (n_k <= eta) only, SGD on the rest;
    `tail_weight` scales the tail loss (2 in ImbSAM's public code, 1 in its paper)."""
    capturable = False      # `parts` reads the batch's classes back to the host

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.05, eta: float = 100.0,
                 tail_weight: float = 1.0, **kwargs):
        a, c = imbsam_weights(class_counts, eta, tail_weight)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)

    def parts(self, model, a: torch.Tensor, c: torch.Tensor):
        """A batch may hold no tail (or no head) sample: ImbSAM's code then skips that part's passes
        (no tail: g = grad L_a(w) exactly, one forward). Under DDP the counts are summed over the
        ranks, so all agree; stacked members without a tail sample ride along in the perturbed pass
        with eps = 0 and weight 0, and `skip` keeps their BatchNorm statistics as they were."""
        if members(model):
            has = sharp_members(c)
            sharp = bool(has.any())
            return float(c.shape[-1]), True, sharp, (~has if sharp and not bool(has.all()) else None)
        stats = torch.stack([torch.full_like(a[:1].sum(), float(a.shape[-1])), (a != 0).sum().to(a.dtype),
                             (c != 0).sum().to(a.dtype)])
        self.sum_across_ranks(model, [stats])
        return stats[0], bool(stats[1] > 0), bool(stats[2] > 0), None


@dataclass(frozen=True)
class FocalSAMOptions(TwoPartOptions):
    gamma: float = opt(2.0, "Focal-SAM: focusing exponent on (1 - pi_k), >= 0")
    lam: float = opt(1.0, "Focal-SAM: sharpness weight lambda, >= 0 (the official iNaturalist run uses 1.1)")

    def check(self) -> None:
        super().check()
        check_focal_sam(self.gamma, self.lam)


class FocalSAM(WeightedSAM):
    """Focal-SAM (Li et al. ICML 2025): sharpness weighted by lam * (1 - pi_k)^gamma per class."""

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.05, gamma: float = 2.0,
                 lam: float = 1.0, **kwargs):
        a, c = focal_sam_weights(class_counts, gamma, lam)
        super().__init__(params, lr, a, c, rho=rho, **kwargs)


@dataclass(frozen=True)
class RWPOptions(PerturbOptions):
    rho: float = opt(0.01, "rwp: RWP's gamma, the noise's standard deviation relative to each filter's norm")
    alpha: float = opt(0.5, ALPHA_DOC)
    random_seed: int = opt(0, "perturb random (and rwp): seed of the noise, >= 0")

    def check(self) -> None:
        super().check()
        check_mixing(self.alpha)
        build_rule("random", random_seed=self.random_seed)


class RWP(WeightedSAM):
    """m-RWP (Li et al. 2022, nblt/RWP): (1 - alpha) grad L(w) + alpha grad L(w + eps) with RWP's
    filter-wise Gaussian eps (the `random` rule; rho is its gamma, 0.01 in its CIFAR recipe):
    the weighting a = 1 - alpha, c = alpha for every class. alpha = 1 is plain RWP. Its official
    code computes the two gradients on two GPUs, each on its own batch; here both use the batch."""

    def __init__(self, params, lr: float, rho: float = 0.01, alpha: float = 0.5, random_seed: int = 0,
                 class_counts: Optional[Sequence] = None, **kwargs):
        a, c = mixed_weights(len(class_counts), alpha) if class_counts is not None else (1.0 - alpha, alpha)
        check_mixing(alpha)
        super().__init__(params, lr, a, c, rho=rho, perturb="random", random_seed=random_seed, **kwargs)
