"""Vector-scaling loss (VS, Kini et al. NeurIPS 2021)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.options import opt, require
from losses.base import LossOptions, PerSampleLoss


@dataclass(frozen=True)
class VSOptions(LossOptions):
    tau: float = opt(1.0, "VS: additive tau * log(pi_k)")
    gamma: float = opt(0.3, "VS: multiplicative (n_k / n_max)^gamma (VS code default)")

    def check(self) -> None:
        super().check()
        check_vs(self.gamma)


def check_vs(gamma: float) -> None:
    require("gamma", gamma >= 0, "must be >= 0 (VS: exponent of n_k / n_max)", gamma)


class VectorScaling(PerSampleLoss):
    """CE on z_k * (n_k / n_max)^gamma + tau * log(pi_k): a multiplicative (CDT-like) and an
    additive (LA-like) logit adjustment. gamma = 0 gives LA with tau; tau = 0 gives CDT."""

    def __init__(self, class_counts, gamma: float = 0.3, tau: float = 1.0, reduction: str = "batch"):
        check_vs(gamma)
        super().__init__(class_counts, reduction)
        n = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("scale", (n / n.max()) ** gamma)      # (C,)
        self.tau = tau

    def unweighted(self, logits, targets):
        adjusted = logits * self.scale.to(logits.dtype) + self.tau * self.log_prior.to(logits.dtype)
        return F.cross_entropy(adjusted, targets, reduction="none")
