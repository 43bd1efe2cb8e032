"""Optimizer registry and the library API.

    from optim import SGD, SAM, ImbSAM, CCSAM, FocalSAM
    opt = FocalSAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4,
                   rho=0.2, gamma=3.0, lam=0.5, class_counts=counts)
    loss, logits = opt.step(model, images, targets, criterion)   # criterion -> per-sample losses

YAML `optim.name` -> builder(cfg: OptimConfig, params, class_counts, amp) -> optimizer.
"""
from core.registry import Component, lookup
from optim.base import SharpnessOptimizer
from optim.ccsam import CCSAM
from optim.schedules import cosine_lr, piecewise_rho
from optim.sharpness import SAM, SGD, FocalSAM, ImbSAM, WeightedSAM

_PERTURB = ("rho", "rho_milestones", "bn_mode", "exclude_bn_bias", "perturbation")


def _common(cfg, amp):
    return dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, amp=amp)


def _perturb(cfg):
    return dict(rho=cfg.rho, bn_mode=cfg.bn_mode, exclude_bn_bias=cfg.exclude_bn_bias, perturbation=cfg.perturbation)


OPTIMIZERS = {
    "sgd": Component(lambda cfg, params, counts, amp: SGD(params, class_counts=counts, **_common(cfg, amp))),
    "sam": Component(lambda cfg, params, counts, amp: SAM(params, class_counts=counts, **_common(cfg, amp),
                                                          **_perturb(cfg)), uses=_PERTURB),
    "imbsam": Component(lambda cfg, params, counts, amp: ImbSAM(params, class_counts=counts, eta=cfg.eta,
                                                                **_common(cfg, amp), **_perturb(cfg)),
                        uses=_PERTURB + ("eta",)),
    "focal_sam": Component(lambda cfg, params, counts, amp: FocalSAM(params, class_counts=counts, gamma=cfg.gamma,
                                                                     lam=cfg.lam, **_common(cfg, amp), **_perturb(cfg)),
                           uses=_PERTURB + ("gamma", "lam")),
    "cc_sam": Component(lambda cfg, params, counts, amp: CCSAM(
        params, class_counts=counts, rho=cfg.rho, ratio=cfg.ratio, radius=cfg.radius, scope=cfg.scope,
        bn_mode=cfg.bn_mode, perturbation=cfg.perturbation, **_common(cfg, amp)),
        uses=("rho", "rho_milestones", "bn_mode", "perturbation", "ratio", "radius", "scope")),
}


def build_optimizer(cfg, params, class_counts, amp: str = "none"):
    return lookup(OPTIMIZERS, cfg.name, "optim.name", "optimizer").build(cfg, params, class_counts, amp)
