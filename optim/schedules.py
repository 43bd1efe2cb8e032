"""Per-epoch schedules, expanded once into plain lists (schedules are data, not code branches)."""
import math
from typing import List, Sequence, Tuple


def cosine_lr(base_lr: float, epochs: int, warmup_epochs: int = 0) -> List[float]:
    """Learning rate of each epoch: linear warm-up, then cosine from base_lr towards 0.

    Epoch e (0-based) after warm-up gets base_lr * (1 + cos(pi * t / T)) / 2 with t = e - warmup,
    T = epochs - warmup: what torch's CosineAnnealingLR(T_max=epochs) stepped once per epoch
    gives, the official Focal-SAM schedule ("cosine LR per epoch to 0", no warm-up).
    """
    out = []
    for e in range(epochs):
        if e < warmup_epochs:
            out.append(base_lr * (e + 1) / warmup_epochs)
        else:
            t, span = e - warmup_epochs, epochs - warmup_epochs
            out.append(base_lr * 0.5 * (1.0 + math.cos(math.pi * t / span)))
    return out


def piecewise_rho(rho: float, milestones: Sequence[Tuple[int, float]], epochs: int) -> List[float]:
    """rho of each epoch: `rho` until the first milestone epoch, then each milestone's value.

    constant:     milestones = []
    step:         milestones = [[160, 0.2]]           (ImageNet-LT Focal-SAM: 0.1, then 0.2 from 160)
    breakpoints:  milestones = [[160, 0.5], [180, 0.6]]  (Saddle-LongTail CIFAR presets)
    """
    out, current, todo = [], rho, sorted(milestones)
    for e in range(epochs):
        while todo and todo[0][0] <= e:
            current = todo.pop(0)[1]
        out.append(current)
    return out


def proportional_rho(lrs: Sequence[float], rho_max: float, rho_min: float) -> List[float]:
    """rho of each epoch tied to its learning rate (GSAM, Zhuang et al. ICLR 2022, Sec. 5):
    rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min), with lr_max the
    schedule's peak and lr_min = 0, the value the cosine schedule falls to (the authors' example
    and big_vision's jax code take lr_min = 0 for a cosine to 0). A constant lr gives rho_max."""
    peak = max(lrs, default=0.0)
    return [rho_min + (rho_max - rho_min) * lr / peak if peak > 0 else rho_max for lr in lrs]
