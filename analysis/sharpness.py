"""Class-wise sharpness (Focal-SAM paper, Eq. 4): how much each class's loss rises when the
weights move by a perturbation of norm rho,

    S_k = L_k(w + eps) - L_k(w),

with L_k the mean loss over class k's samples. `direction`:
  "sam"    one perturbation for every class, SAM's: eps = rho u / ||u||, u = grad sum_k pi_k L_k
           (the gradient of the training loss, classes weighted by their share pi_k);
  "class"  each class its own worst-case first-order perturbation, eps_k = rho grad L_k / ||grad L_k||.
"""
from typing import Callable, Dict, List, Sequence

import torch

from analysis.eigen import Track, no_track
from analysis.params import displaced

# class_losses(classes) -> (len(classes),) mean loss of each class at the current weights.
ClassLosses = Callable[[Sequence[int]], torch.Tensor]
# weighted_grad(classes, weights) -> gradient (one tensor per parameter) of sum_i weights[i] L_{classes[i]}.
WeightedGrad = Callable[[Sequence[int], Sequence[float]], List[torch.Tensor]]
DIRECTIONS = ("sam", "class")


def ascent_step(grads: Sequence[torch.Tensor], rho: float) -> List[torch.Tensor]:
    """eps = rho g / (||g|| + 1e-12), one norm over every tensor (SAM's first-order worst case)."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    return [rho * g / (norm.to(g.dtype) + 1e-12) for g in grads]


def classwise_sharpness(params: Sequence[torch.Tensor], class_losses: ClassLosses, weighted_grad: WeightedGrad,
                        classes: Sequence[int], prior: Sequence[float], rho: float, direction: str = "sam",
                        track: Track = no_track) -> Dict[str, List[float]]:
    """-> {"loss", "perturbed_loss", "sharpness"}: one value per class of `classes`, in order.
    `prior[i]`: the weight of classes[i] in SAM's objective (its training share; renormalised)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    classes = list(classes)
    with torch.no_grad():
        base = class_losses(classes).double().cpu()
    if direction == "sam":
        total = float(sum(prior))
        eps = ascent_step(weighted_grad(classes, [p / total for p in prior]), rho)
        with displaced(params) as s, torch.no_grad():
            s.shift(eps)
            perturbed = class_losses(classes).double().cpu()
    else:
        values = []
        for k in track(classes, "class-wise sharpness"):
            eps = ascent_step(weighted_grad([k], [1.0]), rho)
            with displaced(params) as s, torch.no_grad():
                s.shift(eps)
                values.append(class_losses([k]).double().cpu()[0])
        perturbed = torch.stack(values)
    return {"loss": base.tolist(), "perturbed_loss": perturbed.tolist(), "sharpness": (perturbed - base).tolist()}
