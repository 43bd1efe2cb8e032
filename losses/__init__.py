"""Loss registry: YAML `loss.name` -> builder(cfg: LossConfig, class_counts) -> per-sample loss.

Every loss maps (logits (B, C), targets (B,)) to per-sample losses (B,), so every optimizer works
with every loss. DRW class weights are set per epoch by `losses.drw.drw_weights`.
"""
from engine.registry import Component, lookup
from losses.ce import CrossEntropy, LogitAdjusted
from losses.drw import class_balanced_weights, drw_weights

LOSSES = {
    "ce": Component(lambda cfg, counts: CrossEntropy(counts, cfg.drw_reduction)),
    "la": Component(lambda cfg, counts: LogitAdjusted(counts, cfg.tau, cfg.drw_reduction), uses=("tau",)),
}


def build_loss(cfg, class_counts):
    return lookup(LOSSES, cfg.name, "loss.name", "loss").build(cfg, class_counts)
