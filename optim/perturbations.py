"""Perturbation rules: how the weighted sharpness step (optim/sharpness.py) turns the ascent
direction u = grad L_c(w) into the perturbation eps that it evaluates grad L_c at.

A rule is the second axis of the sharpness methods, independent of the per-class weighting (the
first axis: which classes' losses form L_c, optim/class_weights.py): `optim.perturb: sam` with
`optim.name: focal_sam` is Focal-SAM as published. A rule is an object with

    needs_gradient   whether it reads u (a rule that does not saves the ascent backward pass)
    capturable       whether it runs without reading a value back to the host (CUDA graphs)
    __call__(params, u, rhos, model) -> eps, one tensor per parameter (it may reuse u's storage)
    state_dict() / load_state_dict(d)   what a resumed run needs (tensors shaped like the params)

Norms are taken per member when `model` is stacked (optim/members.py), so a rule's eps for
member k is the eps that member k alone would get. New rules are one class here and one entry in
RULES; their options are keys of the `optim` section (optim/sharpness.py `PerturbOptions`).
"""
from typing import Dict, List, Sequence

import torch

from optim.members import broadcast, total_norm


class SAMRule:
    """SAM's first-order solution of max_{||eps|| <= rho} L_c(w + eps) (Foret et al. 2021, Eq. 2;
    Focal-SAM's Eq. 7): eps = rho u / (||u||_2 + 1e-12), one norm over every perturbed parameter."""
    needs_gradient, capturable = True, True

    def __call__(self, params: Sequence[torch.Tensor], u: List[torch.Tensor], rhos: Sequence[float], model):
        norm = total_norm(u, model) + 1e-12                    # a scalar, or (N,) per member
        return [g.mul_(broadcast(rho / norm, g)) for g, rho in zip(u, rhos)]

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass


RULES = {"sam": SAMRule}


def build_rule(name: str, **options):
    if name not in RULES:
        raise ValueError(f"perturb must be one of {sorted(RULES)}, got {name!r}")
    return RULES[name](**options)
