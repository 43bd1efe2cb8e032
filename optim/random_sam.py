"""Random-direction SAM: the perturbation along a random direction instead of the gradient, a
baseline that tells "any perturbation of size rho" from "the sharpest one" (one forward, one
backward per step, like SGD):

    eps = rho * z / ||z||,   z ~ N(0, I) over all perturbed parameters
    g   = grad L(w + eps)                      # handed to the base SGD step

z comes from a generator seeded by (seed, step): the same on every DDP rank and after a resume.
The returned logits are those at w + eps (there is no pass at w).
"""
from dataclasses import dataclass

import torch

from core.options import opt
from optim.base import PerturbOptions, SharpnessOptimizer


@dataclass(frozen=True)
class RandomSAMOptions(PerturbOptions):
    seed: int = opt(0, "random SAM: seed of the random directions")


class RandomSAM(SharpnessOptimizer):
    def __init__(self, params, lr: float, class_counts=None, seed: int = 0, **kwargs):
        super().__init__(params, lr, **kwargs)
        self.seed, self.steps = seed, 0

    def step(self, model, images, targets, criterion):
        self.zero_grad(set_to_none=True)
        params, rhos = self.perturbed(model)
        eps = self.random_direction(params, rhos)
        with self.no_sync(model), self.moved(model, params, eps):
            logits, losses = self.forward(model, images, targets, criterion)        # l_i(w + eps)
            self.backward(losses.sum() / self.global_batch_size(model, targets))    # grad L(w + eps)
        self.finish(model)
        self.steps += 1
        return losses.detach().mean(), logits.detach()

    def random_direction(self, params, rhos):
        """rho * z / ||z|| for this step's z."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        z = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) for p in params]
        norm = torch.nn.utils.get_total_norm(z)
        return [zi.mul_(rho / norm) for zi, rho in zip(z, rhos)]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.steps = state_dict["steps"]
