"""What each analysis figure of the Focal-SAM paper shows, as data: which table's runs feed it,
the methods in its panels, the groups, and the hyperparameter grids of the ablations.

The paper's text gives the captions but not the swept values of Figures 4, 5 and 8 (they are in
the images): the grids below are our choice around the official settings, which are marked.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

# Panel order of Figures 2, 6, 7, 9-11: (label, optimizer name in the config file names).
METHODS: Tuple[Tuple[str, str], ...] = (("SAM", "sam"), ("ImbSAM", "imbsam"), ("CC-SAM", "cc_sam"),
                                        ("Focal-SAM", "focal_sam"))


@dataclass(frozen=True)
class RunFigure:
    """A figure drawn from one table's runs: configs <loss>_<method>.yaml of its IF 100 column."""
    number: str
    table: str            # repro/tables.yaml id whose runs hold the checkpoints
    loss: str             # config prefix: vs, ce, la, ldam_drw
    caption: str


SPECTRA: Dict[str, RunFigure] = {
    "2": RunFigure("2", "5", "vs", "Hessian eigenvalue density, head and tail, CIFAR-10-LT, VS loss"),
    "9": RunFigure("9", "6", "vs", "Hessian eigenvalue density, head and tail, CIFAR-100-LT, VS loss"),
    "10": RunFigure("10", "5", "ce", "Hessian eigenvalue density, head and tail, CIFAR-10-LT, CE loss"),
    "11": RunFigure("11", "2", "ce", "Hessian eigenvalue density, head and tail, CIFAR-100-LT, CE loss"),
}
LANDSCAPES: Dict[str, RunFigure] = {
    "6": RunFigure("6", "6", "vs", "Loss landscape, head and tail, CIFAR-100-LT, VS loss"),
    "7": RunFigure("7", "5", "vs", "Loss landscape, head and tail, CIFAR-10-LT, VS loss"),
}
TABLE_COLUMN = "IF100"    # the figures use the imbalance ratio 100 runs


@dataclass(frozen=True)
class Ablation:
    number: str
    param: str                                   # the optim.<param> swept
    values: Tuple[float, ...]
    configs: Tuple[str, ...]                     # paths relative to the repository
    caption: str


_CIFAR = ("configs/cifar10_lt", "configs/cifar100_lt")
ABLATIONS: Dict[str, Ablation] = {
    "4": Ablation("4", "gamma", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0),
                  tuple(f"{d}/la_focal_sam.yaml" for d in _CIFAR), "Focal-SAM accuracy against gamma"),
    "5": Ablation("5", "lam", (0.2, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2),
                  tuple(f"{d}/la_focal_sam.yaml" for d in _CIFAR), "Focal-SAM accuracy against lambda"),
    "8": Ablation("8", "rho", (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                  tuple(f"{d}/{loss}_focal_sam.yaml" for d in _CIFAR for loss in ("ldam_drw", "la", "vs")),
                  "Focal-SAM accuracy against rho (LDAM-DRW, LA, VS)"),
}

# Figure 3: the densities of (1 - pi_k)^gamma; the official gamma of each set (`--flat_gamma` in
# github.com/scongl/Focal-SAM scripts/*.sh, as each set's la_focal_sam.yaml says).
FOCAL_DATASETS: Dict[str, str] = {"cifar10_lt": "CIFAR-10-LT", "cifar100_lt": "CIFAR-100-LT",
                                  "imagenet_lt": "ImageNet-LT", "inat2018": "iNaturalist 2018"}
PAPER_GAMMA: Dict[str, float] = {"cifar10_lt": 3.0, "cifar100_lt": 3.2, "imagenet_lt": 0.8, "inat2018": 2.0}
FOCAL_GAMMAS: Tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0)
