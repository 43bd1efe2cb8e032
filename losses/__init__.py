"""Loss registry: YAML `loss.name` -> builder(options, class_counts) -> per-sample loss module.

Every loss maps (logits (B, C), targets (B,)) to per-sample losses (B,), so every optimizer works
with every loss. DRW class weights are set per epoch by `losses.drw.drw_weights`. A new loss is
one file (its module and, if it has keys of its own, an options class extending
`losses.base.LossOptions`; those keys are its constructor's keyword arguments) plus one line here.
"""
from core.options import own_fields
from core.registry import Component, lookup
from losses.base import LossOptions, PerSampleLoss
from losses.ce import CrossEntropy, LAOptions, LogitAdjusted
from losses.drw import class_balanced_weights, drw_weights
from losses.ldam import LDAM, LDAMOptions
from losses.vs import VectorScaling, VSOptions


def _loss(cls):
    """Builder: the class counts, the DRW reduction and the loss's own options."""
    return lambda o, counts: cls(counts, reduction=o.drw_reduction, **own_fields(o, LossOptions))


LOSSES = {
    "ce": Component(_loss(CrossEntropy), LossOptions),
    "la": Component(_loss(LogitAdjusted), LAOptions),
    "vs": Component(_loss(VectorScaling), VSOptions),
    "ldam": Component(_loss(LDAM), LDAMOptions,
                      requires=(("model.classifier", "cosine", "LDAM's margins act on cosine logits"),)),
}


def build_loss(options: LossOptions, class_counts) -> PerSampleLoss:
    return lookup(LOSSES, options.name, "loss.name", "loss").build(options, class_counts)
