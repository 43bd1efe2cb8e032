"""Optimizer registry and the library API.

    from optim import SGD, SAM, ImbSAM, CCSAM, FocalSAM, GSAM, LookSAM, RWP, SSESAM
    opt = FocalSAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4,
                   rho=0.2, gamma=3.0, lam=0.5, class_counts=counts)    # perturb="asam": ASAM's rule
    loss, logits = opt.step(model, images, targets, criterion)   # criterion -> per-sample losses

YAML `optim.name` -> builder(options, params, class_counts, amp) -> optimizer. A new optimizer is
one file (its class and an options class whose fields are its constructor's keyword arguments,
extending `optim.base.OptimOptions`, `RhoOptions`, `PerturbOptions` or, with a perturbation rule,
`optim.perturbations.RuleOptions`) plus one line here.
"""
from functools import partial

from core.registry import Component, lookup
from optim.base import OptimOptions, PerturbOptions, RhoOptions, SharpnessOptimizer, constructor_args
from optim.ccsam import CCSAM, CCSAMOptions
from optim.gsam import GSAM, GSAMOptions
from optim.looksam import LookSAM, LookSAMOptions
from optim.perturbations import RuleOptions
from optim.random_sam import RandomSAM, RandomSAMOptions
from optim.schedules import cosine_lr, piecewise_rho, proportional_rho
from optim.sharpness import RWP, SAM, SGD, FocalSAM, FocalSAMOptions, ImbSAM, ImbSAMOptions, RWPOptions, WeightedSAM
from optim.ssesam import SSESAM, SSESAMOptions


def _build(cls, o, params, counts, amp):
    return cls(params, class_counts=counts, amp=amp, **constructor_args(o))


def _optimizer(cls):
    """Builder: the class counts, the precision and every option but the name and rho schedule."""
    return partial(_build, cls)


OPTIMIZERS = {
    "sgd": Component(_optimizer(SGD), OptimOptions),
    "sam": Component(_optimizer(SAM), RuleOptions),
    "imbsam": Component(_optimizer(ImbSAM), ImbSAMOptions),
    "focal_sam": Component(_optimizer(FocalSAM), FocalSAMOptions),
    "cc_sam": Component(_optimizer(CCSAM), CCSAMOptions),
    "sse_sam": Component(_optimizer(SSESAM), SSESAMOptions),
    "random_sam": Component(_optimizer(RandomSAM), RandomSAMOptions),   # the README's worked example
    "gsam": Component(_optimizer(GSAM), GSAMOptions),
    "looksam": Component(_optimizer(LookSAM), LookSAMOptions),
    "rwp": Component(_optimizer(RWP), RWPOptions),
}


def optimizer_class(name: str) -> type:
    """The class behind `optim.name` (e.g. to ask whether it is `stackable`)."""
    return lookup(OPTIMIZERS, name, "optim.name", "optimizer").build.args[0]


def build_optimizer(options: OptimOptions, params, class_counts, amp: str = "none") -> SharpnessOptimizer:
    return lookup(OPTIMIZERS, options.name, "optim.name", "optimizer").build(options, params, class_counts, amp)
