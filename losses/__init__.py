"""Loss registry: YAML `loss.name` -> builder(cfg: LossConfig, class_counts) -> per-sample loss.

Every loss maps (logits (B, C), targets (B,)) to per-sample losses (B,), so every optimizer works
with every loss. DRW class weights are set per epoch by `losses.drw.drw_weights`.
"""
from core.registry import Component, lookup
from losses.ce import CrossEntropy, LogitAdjusted
from losses.drw import class_balanced_weights, drw_weights
from losses.ldam import LDAM
from losses.vs import VectorScaling

LOSSES = {
    "ce": Component(lambda cfg, counts: CrossEntropy(counts, cfg.drw_reduction)),
    "la": Component(lambda cfg, counts: LogitAdjusted(counts, cfg.tau, cfg.drw_reduction), uses=("tau",)),
    "vs": Component(lambda cfg, counts: VectorScaling(counts, cfg.gamma, cfg.tau, cfg.drw_reduction),
                    uses=("tau", "gamma")),
    "ldam": Component(lambda cfg, counts: LDAM(counts, cfg.max_m, cfg.s, cfg.drw_reduction), uses=("max_m", "s"),
                      requires=(("model.classifier", "cosine", "LDAM's margins act on cosine logits"),)),
}


def build_loss(cfg, class_counts):
    return lookup(LOSSES, cfg.name, "loss.name", "loss").build(cfg, class_counts)
