"""Per-class weight vectors (a, c) that turn the one weighted-SAM step into each method.

The step (optim/sharpness.py) minimises L_a(w) + L_c(w + eps) with eps along grad L_c(w), where
L_v(w) = (1/b) sum_i v[y_i] l_i(w). These pure functions of the class counts choose a and c:

    SGD        a = 1                              c = 0        (no perturbation)
    SAM        a = 0                              c = 1
    ImbSAM     a = [n_k > eta]                    c = t [n_k <= eta]   (t = tail_weight, 1 as published)
    Focal-SAM  a = 1 - lam (1 - pi_k)^gamma       c = lam (1 - pi_k)^gamma,   pi_k = n_k / n
    m-RWP      a = 1 - alpha                      c = alpha    (with RWP's random perturbation)

Focal-SAM with gamma = 0, lam = 1 is SAM; as gamma grows, (1 - pi_k)^gamma falls fastest for the
head classes, so the weights approach an ImbSAM-like split (Focal-SAM paper, section 4).
"""
from typing import Optional, Tuple

import torch

from core.options import require

Weights = Tuple[torch.Tensor, torch.Tensor]


def _counts(class_counts) -> torch.Tensor:
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if n.ndim != 1 or len(n) == 0 or (n < 0).any():
        raise ValueError(f"class_counts must be a non-empty list of non-negative counts, got {class_counts!r}")
    return n


def sgd_weights(num_classes: int) -> Weights:
    return torch.ones(num_classes, dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64)


def sam_weights(num_classes: int) -> Weights:
    return torch.zeros(num_classes, dtype=torch.float64), torch.ones(num_classes, dtype=torch.float64)


def mixed_weights(num_classes: int, alpha: float) -> Weights:
    """m-RWP's mixed loss (1 - alpha) L(w) + alpha L(w + eps): the same weights for every class
    (Focal-SAM's with gamma = 0, lam = alpha)."""
    check_mixing(alpha)
    return torch.full((num_classes,), 1.0 - alpha, dtype=torch.float64), torch.full((num_classes,), alpha,
                                                                                    dtype=torch.float64)


def check_mixing(alpha: float) -> None:
    require("alpha", 0 <= alpha <= 1, "must be in [0, 1] (m-RWP: weight of the perturbed loss; 1 = RWP)", alpha)


def check_imbsam(eta: float, tail_weight: float) -> None:
    require("eta", eta >= 0, "must be >= 0 (ImbSAM: tail = classes with n_k <= eta)", eta)
    require("tail_weight", tail_weight > 0, "must be > 0 (ImbSAM: factor on the tail loss; 1 paper, 2 its code)",
            tail_weight)


def check_focal_sam(gamma: float, lam: float) -> None:
    """A negative lam would flip the perturbation; lam > 1 is allowed (iNaturalist: 1.1)."""
    require("gamma", gamma >= 0, "must be >= 0 (Focal-SAM: exponent of 1 - pi_k)", gamma)
    require("lam", lam >= 0, "must be >= 0 (Focal-SAM: sharpness weight)", lam)


def imbsam_weights(class_counts, eta: float, tail_weight: float = 1.0) -> Weights:
    """ImbSAM (Zhou et al. ICCV 2023): tail = classes with n_k <= eta, their loss times
    `tail_weight`. Its paper's update (Alg. 1 line 10, Eq. 17) has weight 1; its public code
    (cool-xuan/Imbalanced_SAM, utils/trainval.py `forbackward`) multiplies the tail loss by 2 in
    both tail passes. The factor leaves the perturbation unchanged (eps is a normalised
    gradient) and scales the tail's share of the update."""
    check_imbsam(eta, tail_weight)
    n = _counts(class_counts)
    tail = (n <= eta).double()
    return 1.0 - tail, tail_weight * tail


def focal_sam_weights(class_counts, gamma: float, lam: float) -> Weights:
    """Focal-SAM (Li et al. ICML 2025): c_k = lam (1 - pi_k)^gamma, a_k = 1 - c_k."""
    check_focal_sam(gamma, lam)
    n = _counts(class_counts)
    c = lam * (1.0 - n / n.sum()) ** gamma
    return 1.0 - c, c


class ClassWeights:
    """The pair (a, c) of one optimizer: per-sample weights on the batch's device, and which parts
    are present in every batch (decided once, from the weights: a part whose weights are all zero
    is never present; otherwise it is present, unless the method looks at each batch: ImbSAM)."""

    def __init__(self, clean, sharp):
        self.a = torch.as_tensor(clean, dtype=torch.float64)
        self.c = torch.as_tensor(sharp, dtype=torch.float64)
        if self.a.shape != self.c.shape or self.a.ndim > 1:
            raise ValueError("clean_weight and sharp_weight must be scalars or vectors of one length")
        self.clean, self.sharp = bool((self.a != 0).any()), bool((self.c != 0).any())
        self._on_device = {}

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.a) if self.a.ndim else None

    def per_sample(self, targets: torch.Tensor, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a[y_i], c[y_i]) shaped like targets. The vectors are copied to the device once: a copy
        per step would be a host sync, which a CUDA graph cannot record."""
        key = (targets.device, dtype)
        if key not in self._on_device:
            self._on_device[key] = (self.a.to(targets.device, dtype), self.c.to(targets.device, dtype))
        return tuple(w.expand(targets.shape) if w.ndim == 0 else w[targets] for w in self._on_device[key])
