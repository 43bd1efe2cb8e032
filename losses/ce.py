"""Cross-entropy and logit-adjusted cross-entropy (LA, Menon et al. ICLR 2021)."""
from dataclasses import dataclass

import torch.nn.functional as F

from core.options import opt
from losses.base import LossOptions, PerSampleLoss


@dataclass(frozen=True)
class LAOptions(LossOptions):
    tau: float = opt(1.0, "LA: additive tau * log(pi_k)")


class CrossEntropy(PerSampleLoss):
    def unweighted(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")


class LogitAdjusted(PerSampleLoss):
    """CE on z_k + tau * log(pi_k): the logit-adjusted loss, Menon et al. Eq. 10."""

    def __init__(self, class_counts, tau: float = 1.0, reduction: str = "batch"):
        super().__init__(class_counts, reduction)
        self.tau = tau

    def unweighted(self, logits, targets):
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits.dtype), targets, reduction="none")
