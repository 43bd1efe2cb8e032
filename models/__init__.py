"""Model registry: YAML `model.name` -> builder(cfg: ModelConfig, num_classes) -> nn.Module.

Every model exposes `forward_features(x) -> (B, D)`, its head at `.classifier`, and
`forward(x, return_features=False)`.
"""
from functools import partial

from core.registry import Component, lookup
import torch

from models.resnet import TorchvisionResNet
from models.resnet_cifar import CifarResNet


def _cifar_resnet(depth, cfg, num_classes):
    return CifarResNet(depth, num_classes, cfg.classifier)


def _torchvision_resnet(arch, cfg, num_classes):
    return TorchvisionResNet(arch, num_classes, cfg.classifier)


MODELS = {
    "resnet32": Component(partial(_cifar_resnet, 32)),   # the paper's CIFAR backbone
    "resnet20": Component(partial(_cifar_resnet, 20)),
    "resnet8": Component(partial(_cifar_resnet, 8)),     # tiny, for tests and smoke runs
    "resnet50": Component(partial(_torchvision_resnet, "resnet50")),   # ImageNet-LT, iNaturalist
    "resnet18": Component(partial(_torchvision_resnet, "resnet18")),
}


def build_model(cfg, num_classes: int):
    model = lookup(MODELS, cfg.name, "model.name", "model").build(cfg, num_classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model
