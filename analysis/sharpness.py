"""Class-wise sharpness (Focal-SAM paper, Eq. 4): how much each class's loss rises when the
weights move by a perturbation of norm rho,

    S_k = L^k(w + eps) - L^k(w).

The paper's L^k (sec. 3.1) is class k's share of the training loss, L_S^k(w) = (1/n) sum over the
samples of class k of l_i = pi_k x (the mean loss of class k), pi_k = n_k / n. `definition`:
  "mean"   L^k = the mean loss of class k (the default: comparable across classes of any size);
  "paper"  L^k = pi_k x that mean, Eq. 4 as written (head classes weigh in by their share).
`direction`:
  "sam"    one perturbation for every class, SAM's: eps = rho u / ||u||, u = grad sum_k pi_k L_k
           over EVERY class (the gradient of the training loss), whichever classes are reported;
  "class"  each class its own worst-case first-order perturbation, eps_k = rho grad L_k / ||grad L_k||.
The classes asked for select what is reported; what is measured for a class does not depend on
which other classes are reported.
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
DEFINITIONS = ("mean", "paper")


def ascent_step(grads: Sequence[torch.Tensor], rho: float) -> List[torch.Tensor]:
    """eps = rho g / (||g|| + 1e-12), one norm over every tensor (SAM's first-order worst case)."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    return [rho * g / (norm.to(g.dtype) + 1e-12) for g in grads]


def classwise_sharpness(params: Sequence[torch.Tensor], class_losses: ClassLosses, weighted_grad: WeightedGrad,
                        classes: Sequence[int], prior: Sequence[float], rho: float, direction: str = "sam",
                        definition: str = "mean", track: Track = no_track) -> Dict[str, List[float]]:
    """-> {"loss", "perturbed_loss", "sharpness"}: one value per class of `classes` (those reported),
    in order. `prior[k]`: pi_k, the training share of class k, for EVERY class k of the model."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    classes = list(classes)
    with torch.no_grad():
        base = class_losses(classes).double().cpu()
    if direction == "sam":
        total = float(sum(prior))
        eps = ascent_step(weighted_grad(range(len(prior)), [p / total for p in prior]), rho)
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
    if definition == "paper":   # L_S^k = pi_k x the class mean (Eq. 4 with sec. 3.1's L_S^k)
        share = torch.tensor([float(prior[k]) / float(sum(prior)) for k in classes], dtype=torch.float64)
        base, perturbed = base * share, perturbed * share
    return {"loss": base.tolist(), "perturbed_loss": perturbed.tolist(), "sharpness": (perturbed - base).tolist()}
