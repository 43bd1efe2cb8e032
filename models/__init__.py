"""Model registry: YAML `model.name` -> builder(cfg: ModelConfig, num_classes, class_names) -> nn.Module.

Every model exposes `forward_features(x) -> (B, D)`, its head at `.classifier`, and
`forward(x, return_features=False)`.
"""
from functools import partial

from core.registry import Component, lookup
import torch

from models.resnet import TorchvisionResNet
from models.resnet_cifar import CifarResNet


def _cifar_resnet(depth, cfg, num_classes, class_names=None):
    return CifarResNet(depth, num_classes, cfg.classifier)


def _torchvision_resnet(arch, cfg, num_classes, class_names=None):
    return TorchvisionResNet(arch, num_classes, cfg.classifier)


def _clip(tiny, cfg, num_classes, class_names=None):
    from models.clip import build_clip_classifier   # imports open_clip: only when a CLIP model is chosen
    return build_clip_classifier(cfg, num_classes, class_names, tiny)


# Options that the CLIP models read (see ModelConfig); the tiny one has no weights to read.
_CLIP_OPTIONS = ("finetune", "adapter_dim", "cosine_scale", "prompts")


MODELS = {
    "resnet32": Component(partial(_cifar_resnet, 32)),   # the paper's CIFAR backbone
    "resnet20": Component(partial(_cifar_resnet, 20)),
    "resnet8": Component(partial(_cifar_resnet, 8)),     # tiny, for tests and smoke runs
    "resnet50": Component(partial(_torchvision_resnet, "resnet50")),   # ImageNet-LT, iNaturalist
    "resnet18": Component(partial(_torchvision_resnet, "resnet18")),
    # CLIP ViT-B/16 fine-tuning (paper section 5.1 FFT / LIFT rows), head from the class names
    "clip_vit_b16": Component(partial(_clip, False), uses=_CLIP_OPTIONS + ("clip_weights", "clip_download")),
    "clip_tiny": Component(partial(_clip, True), uses=_CLIP_OPTIONS),   # random tiny CLIP: tests, smoke runs
}


def build_model(cfg, num_classes: int, class_names=None):
    """`class_names` (label order) are read by the models whose head starts from text (CLIP)."""
    model = lookup(MODELS, cfg.name, "model.name", "model").build(cfg, num_classes, class_names)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model
