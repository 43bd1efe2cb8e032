"""CC-SAM (Zhou et al. CVPR 2023, "Class-Conditional Sharpness-Aware Minimization"), as its
official code (zzpustc/CC-SAM, stage 1) computes it.

One forward through the backbone gives features h_i and logits z_i. For each class k in the batch,
g_k = gradient of class k's mean loss w.r.t. the perturbed scope (by default the classifier only);
eps_k = s_k * g_k with a class-dependent radius (below). Each sample then goes through the
classifier perturbed by its own class's eps (reusing the features), and ONE backward runs on

    L = (1 - r) * mean_i l_i(theta) + r * mean_i l_i(theta + eps_{y_i})        (r = `ratio`)

with eps treated as a constant. The official code averages the perturbed losses over samples, as
here (not over classes). Radius rules (`radius`):

  official: per parameter tensor t and class k, eps_kt = r_kt g_kt / ||g_kt|| with
            r_kt = rho sqrt(||theta||) P^(1/4) / (sqrt(2) (n_k - 1)^(1/4) sqrt(||g_kt||)),
            ||theta|| ONE norm over all perturbed parameters (the norm of the per-tensor norms,
            plus 1e-12), P their number, g_kt the gradient of class k's mean loss w.r.t. tensor t
            (weight and bias separately), n_k the training count (n_k - 1 is clamped to >= 1 so
            that a one-image class does not divide by zero). This is the official code's
            `param_norm = grad_norm(disturb_params) + 1e-12` (zzpustc/CC-SAM train_cifar.py,
            utils/pytorch.py), which despite its name is the norm of the parameters.
  plain:    eps_k = rho_k g_k / ||g_k|| (one norm over the scope), rho_k = rho (n_min / n_k)^(1/4):
            the rarest class gets rho, the radius grows from head to tail like LDAM's margins.

The official configs use rho ("noise_ratio") = 1e-6, a negligible perturbation; their stage 1 is
in effect mixup training, and their stage 2 (class-aware sampler, feature noise) and best-on-test
selection are not part of this optimizer. See docs/reproduce.md, "Known differences from the
official code".

For a linear head and the classifier scope the whole step is vectorised in closed form: with
delta_i = dl_i/dz_i, g_kW = (1/n_k) sum_{j in k} delta_j h_j^T, so the perturbed logits are
z_i + (s_kW / n_k) sum_{j in k} (h_j . h_i) delta_j + (s_kb / n_k) sum_{j in k} delta_j and the
norms ||g_kW||^2 = (1/n_k^2) sum_{i,j in k} (delta_i . delta_j)(h_i . h_j): Gram matrices of the
batch, O(b^2 (D + C)), no per-class copy of the classifier. Any other head, or scope "all", runs
the generic path: one autograd call per class and `torch.func.functional_call` with the
perturbed parameters (no deep copies).

Each perturbed tensor uses the rho of its own param group (the radius rules are per tensor).
Under DDP with perturbation="global" (default) the per-class gradients are those of the global
batch (features and logit gradients are gathered on DDP's process group; generic path: per-class
gradients summed across it); with "local" each replica uses its own batch.
"""
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from core.collectives import gather_variable
from core.options import opt, require
from optim.base import RhoOptions, SharpnessOptimizer, full_precision


@dataclass(frozen=True)
class CCSAMOptions(RhoOptions):
    ratio: float = opt(0.3, "CC-SAM: weight r of the perturbed loss, in [0, 1] (official 0.3)")
    radius: Literal["official", "plain"] = opt("official", "CC-SAM: per-class radius rule (optim/ccsam.py)")
    scope: Literal["classifier", "all"] = opt("classifier", "CC-SAM: parameters perturbed per class")

    def check(self) -> None:
        super().check()
        check_ratio(self.ratio)


def check_ratio(ratio: float) -> None:
    require("ratio", 0.0 <= ratio <= 1.0, "must be in [0, 1] (CC-SAM: weight of the perturbed loss)", ratio)


def radius_scales(grad_norms: torch.Tensor, param_norm: torch.Tensor, num_params: int, counts: torch.Tensor,
                  rho: torch.Tensor, n_min: float, rule: str) -> torch.Tensor:
    """Scale s_kt with eps_kt = s_kt * g_kt, for K classes x T tensors.

    grad_norms (K, T): ||g_kt||; param_norm (): ||theta||, one norm over all perturbed tensors;
    counts (K,): training counts n_k; rho (T,) or (): each tensor's radius. A zero gradient gives
    a zero perturbation.
    """
    rho = torch.as_tensor(rho, dtype=grad_norms.dtype, device=grad_norms.device)
    if rule == "official":
        radius = rho * (param_norm + 1e-12).sqrt() * num_params ** 0.25 / (
            math.sqrt(2.0) * (counts - 1).clamp(min=1.0)[:, None] ** 0.25 * grad_norms.sqrt())
        scale = radius / grad_norms
    elif rule == "plain":
        total = grad_norms.pow(2).sum(1, keepdim=True).sqrt()                       # (K, 1)
        scale = (rho * (n_min / counts[:, None]) ** 0.25 / total).expand_as(grad_norms)
    else:
        raise ValueError(f"radius must be 'official' or 'plain', got {rule!r}")
    return torch.where(grad_norms > 0, scale, torch.zeros_like(scale))


class CCSAM(SharpnessOptimizer):
    """CC-SAM behind the common `step(model, images, targets, criterion)` interface.

    `model` must expose `forward(x, return_features=True) -> (features, logits)` and its head at
    `model.classifier` (every model in `models/` does).

    Args (beyond SharpnessOptimizer's): class_counts (training count per class), rho, ratio
    (r, the weight of the perturbed loss; official 0.3), radius ("official" | "plain"),
    scope ("classifier": perturb the head only, reusing the features, as the official code;
    "all": every parameter, one forward per class through the whole model).
    """

    def __init__(self, params, lr: float, class_counts, rho: float = 0.05, ratio: float = 0.3,
                 radius: str = "official", scope: str = "classifier", **kwargs):
        super().__init__(params, lr, rho=rho, **kwargs)
        check_ratio(ratio)
        if radius not in ("official", "plain"):
            raise ValueError(f"radius must be 'official' or 'plain', got {radius!r}")
        if scope not in ("classifier", "all"):
            raise ValueError(f"scope must be 'classifier' or 'all', got {scope!r}")
        self.class_counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.ratio, self.radius, self.scope = ratio, radius, scope
        self._checked_targets = False

    # ------------------------------------------------------------------ the step
    def step(self, model, images, targets, criterion):
        if not self._checked_targets:
            self.check_targets(targets, len(self.class_counts))
            self._checked_targets = True
        self.zero_grad(set_to_none=True)
        inner = model.module if self.ddp(model) is not None else model
        with self.no_sync(model):
            with self.autocast(images.device.type):
                feats, logits = model(images, return_features=True)
                losses = full_precision(criterion(logits, targets))
            total = self.global_batch_size(model, targets)
            if self.ratio > 0:
                perturbed_logits = self._perturbed_logits(model, inner, images, targets, feats, logits, losses, criterion)
                with self.autocast(images.device.type):
                    perturbed = full_precision(criterion(perturbed_logits, targets))
                loss = ((1.0 - self.ratio) * losses + self.ratio * perturbed).sum() / total
            else:
                loss = losses.sum() / total
            self.backward(loss)
        self.finish(model)
        return losses.detach().mean(), logits.detach()

    def _perturbed_logits(self, model, inner, images, targets, feats, logits, losses, criterion):
        head = inner.classifier
        if self.scope == "classifier" and type(head) is nn.Linear:   # subclasses may change forward: generic
            return self._linear_closed_form(model, head, targets, feats, logits, losses)
        return self._per_class(model, inner, images, targets, feats, logits, losses)

    def _gathered(self, model, *tensors):
        """The tensors of the whole global batch (perturbation='global' under DDP), else as given."""
        ddp = self.ddp(model)
        if ddp is None or self.perturbation == "local":
            return tensors
        return tuple(gather_variable(t.contiguous(), ddp.process_group) for t in tensors)

    # ------------------------------------------------------------------ linear head, closed form
    def _linear_closed_form(self, model, head, targets, feats, logits, losses):
        """Perturbed logits (b, C) for a linear head, vectorised over classes (module docstring)."""
        delta = torch.autograd.grad(losses.sum(), logits, retain_graph=True)[0].to(losses.dtype)   # (b, C)
        h = feats.to(losses.dtype)                                                                # (b, D)
        h_all, delta_all, y_all = self._gathered(model, h.detach(), delta.detach(), targets)
        classes, inverse = torch.unique(y_all, return_inverse=True)                               # (K,), (B,)
        onehot = F.one_hot(inverse, len(classes)).to(h.dtype).t()                                 # (K, B)
        n_batch = onehot.sum(1)                                                                   # (K,)
        gram = h_all @ h_all.t()                                                                  # (B, B)
        w_sq = ((onehot @ ((delta_all @ delta_all.t()) * gram)) * onehot).sum(1) / n_batch ** 2   # ||g_kW||^2
        bias_grad = (onehot @ delta_all) / n_batch[:, None]                                       # g_kb (K, C)
        has_bias = head.bias is not None
        grad_norms = torch.stack([w_sq.clamp(min=0).sqrt()] + ([bias_grad.norm(dim=1)] if has_bias else []), 1)
        params = [head.weight] + ([head.bias] if has_bias else [])
        scales = self._scales(grad_norms, params, classes)                                        # (K, T)
        # Local samples: class index of each within `classes`.
        local_k = torch.searchsorted(classes, targets.contiguous())
        same = (targets[:, None] == y_all[None, :]).to(h.dtype)                                   # (b, B)
        coef = same * (scales[local_k, 0] / n_batch[local_k])[:, None]
        out = logits.to(h.dtype) + (coef * (h @ h_all.t())) @ delta_all
        if has_bias:
            out = out + scales[local_k, 1][:, None] * bias_grad[local_k]
        return out

    def _scales(self, grad_norms, params, classes):
        with torch.no_grad():
            param_norm = torch.nn.utils.get_total_norm([p.detach() for p in params]).to(grad_norms.dtype)
            counts = self.class_counts.to(device=grad_norms.device, dtype=grad_norms.dtype)
            num = sum(p.numel() for p in params)
            return radius_scales(grad_norms, param_norm, num, counts[classes], self._rhos(params), float(counts.min()),
                                 self.radius)

    def _rhos(self, params) -> torch.Tensor:
        """(T,) the rho of each perturbed tensor's param group."""
        rho_of = {id(p): g["rho"] for g in self.param_groups for p in g["params"]}
        return torch.tensor([rho_of[id(p)] for p in params], dtype=torch.float64)

    # ------------------------------------------------------------------ generic: any head, any scope
    def _per_class(self, model, inner, images, targets, feats, logits, losses):
        """Perturbed logits (b, C), one autograd call and one functional forward per class."""
        module = inner.classifier if self.scope == "classifier" else inner
        names, params = zip(*[(n, p) for n, p in module.named_parameters() if p.requires_grad])
        per_class = torch.bincount(targets, minlength=len(self.class_counts)).to(losses.dtype)
        if self.perturbation == "global":
            self.sum_across_ranks(model, [per_class])
        classes = per_class.nonzero().flatten()
        counts_in_batch = per_class[classes]
        grads = []
        for i, k in enumerate(classes):
            mask = (targets == k).to(losses.dtype)
            g = torch.autograd.grad((mask * losses).sum() / counts_in_batch[i].clamp(min=1), params,
                                    retain_graph=True, allow_unused=True)
            grads.append([torch.zeros_like(p) if x is None else x for p, x in zip(params, g)])
        if self.perturbation == "global":
            self.sum_across_ranks(model, [x for g in grads for x in g])
        grad_norms = torch.stack([torch.stack([x.norm() for x in g]) for g in grads]).to(losses.dtype)
        scales = self._scales(grad_norms, params, classes)
        out = torch.zeros_like(logits, dtype=losses.dtype)
        for i, k in enumerate(classes):
            idx = (targets == k).nonzero().flatten()
            if len(idx) == 0:
                continue
            moved = {n: p + scales[i, t].to(p.dtype) * grads[i][t].detach() for t, (n, p) in enumerate(zip(names, params))}
            with self.autocast(images.device.type):
                if self.scope == "classifier":
                    z = functional_call(module, moved, (feats[idx],))
                else:
                    with self.bn_guard(inner):
                        z = functional_call(module, moved, (images[idx],))
            out = out.index_put((idx,), z.to(out.dtype))
        return out
