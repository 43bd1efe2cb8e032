"""LDAM (Cao et al. NeurIPS 2019): label-distribution-aware margins on cosine logits."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.options import opt, require
from losses.base import LossOptions, PerSampleLoss


@dataclass(frozen=True)
class LDAMOptions(LossOptions):
    max_m: float = opt(0.5, "LDAM: largest margin (rarest class)")
    s: float = opt(30.0, "LDAM: logit scale on cosine logits")

    def check(self) -> None:
        super().check()
        check_ldam(self.max_m, self.s)


def check_ldam(max_m: float, s: float) -> None:
    require("max_m", max_m >= 0, "must be >= 0 (LDAM: largest margin)", max_m)
    require("s", s > 0, "must be > 0 (LDAM: logit scale)", s)


class LDAM(PerSampleLoss):
    """CE on s * (z - m_y e_y): the true-class logit minus a margin m_k proportional to
    n_k^(-1/4), scaled so that the largest margin (the rarest class) is `max_m`. The logits z
    must be cosines (model.classifier: cosine), which the scale s = 30 then sharpens."""

    def __init__(self, class_counts, max_m: float = 0.5, s: float = 30.0, reduction: str = "batch"):
        check_ldam(max_m, s)
        super().__init__(class_counts, reduction)
        m = torch.as_tensor(class_counts, dtype=torch.float64).pow(-0.25)
        self.register_buffer("margins", m * (max_m / m.max()))   # (C,)
        self.s = s

    def unweighted(self, logits, targets):
        margin = F.one_hot(targets, logits.shape[1]).to(logits.dtype) * self.margins.to(logits.dtype)[targets, None]
        return F.cross_entropy(self.s * (logits - margin), targets, reduction="none")
