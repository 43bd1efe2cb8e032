"""Model registry: YAML `model.name` -> builder(cfg: ModelConfig, num_classes) -> nn.Module.

Every model exposes `forward_features(x) -> (B, D)`, its head at `.classifier`, and
`forward(x, return_features=False)`.
"""
from functools import partial

from engine.registry import Component, lookup
from models.resnet_cifar import CifarResNet


def _cifar_resnet(depth, cfg, num_classes):
    return CifarResNet(depth, num_classes, cfg.classifier)


MODELS = {
    "resnet32": Component(partial(_cifar_resnet, 32)),   # the paper's CIFAR backbone
    "resnet20": Component(partial(_cifar_resnet, 20)),
    "resnet8": Component(partial(_cifar_resnet, 8)),     # tiny, for tests and smoke runs
}


def build_model(cfg, num_classes: int):
    return lookup(MODELS, cfg.name, "model.name", "model").build(cfg, num_classes)
