"""Deferred re-weighting (DRW, Cao et al. 2019): class-balanced weights switched on late."""
import torch

from core.options import require


def check_drw(beta: float, drw_epoch=None) -> None:
    require("drw_beta", 0 < beta < 1, "must be in (0, 1) (DRW weights (1 - beta) / (1 - beta^n_k))", beta)
    require("drw_epoch", drw_epoch is None or drw_epoch >= 0, "must be a 0-based epoch >= 0, or null", drw_epoch)


def class_balanced_weights(class_counts, beta: float) -> torch.Tensor:
    """w_k = (1 - beta) / (1 - beta^{n_k}), normalised to sum to C (Cui et al. 2019)."""
    check_drw(beta)
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return w / w.sum() * len(n)


def drw_weights(epoch: int, class_counts, drw_epoch, beta: float) -> torch.Tensor:
    """The class weights in force at `epoch` (0-based): ones before `drw_epoch`, CB after."""
    if drw_epoch is None or epoch < drw_epoch:
        return torch.ones(len(class_counts), dtype=torch.float64)
    return class_balanced_weights(class_counts, beta)
