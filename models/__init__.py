"""Model registry: YAML `model.name` -> builder(options, num_classes, class_names, trained_state) -> nn.Module.

Every model exposes `forward_features(x) -> (B, D)`, its head at `.classifier`, and
`forward(x, return_features=False)`. A new backbone is one file (its module, and an options
class extending `models.heads.ModelOptions` if it has keys of its own) plus one line here.
"""
from functools import partial

import torch

from core.registry import Component, lookup
from models.clip import ClipOptions, ClipTinyOptions, build_clip
from models.heads import ModelOptions
from models.resnet import TorchvisionResNet
from models.resnet_cifar import CifarResNet


# CLIP's image tower was trained on 224-pixel crops normalised with CLIP's mean and std: the
# standard presets (32-pixel CIFAR, ImageNet statistics) would fail in its position embedding or
# train silently on the wrong statistics.
CLIP_INPUT = ("data.preprocess", "clip", "224-pixel inputs with CLIP's mean and std")


# The ResNets are built the same way whether a trained state dict follows (`trained_state`) or not.
def _cifar_resnet(depth: int, o: ModelOptions, num_classes: int, class_names=None, trained_state=None):
    return CifarResNet(depth, num_classes, o.classifier)


def _torchvision_resnet(arch: str, o: ModelOptions, num_classes: int, class_names=None, trained_state=None):
    return TorchvisionResNet(arch, num_classes, o.classifier)


MODELS = {
    "resnet32": Component(partial(_cifar_resnet, 32), ModelOptions),   # the paper's CIFAR backbone
    "resnet20": Component(partial(_cifar_resnet, 20), ModelOptions),
    "resnet8": Component(partial(_cifar_resnet, 8), ModelOptions),     # tiny, for tests and smoke runs
    "resnet50": Component(partial(_torchvision_resnet, "resnet50"), ModelOptions),   # ImageNet-LT, iNaturalist
    "resnet18": Component(partial(_torchvision_resnet, "resnet18"), ModelOptions),
    # CLIP ViT-B/16 fine-tuning (paper section 5.1, FFT / LIFT rows): head from the class names
    "clip_vit_b16": Component(partial(build_clip, False), ClipOptions, requires=(CLIP_INPUT,)),
    "clip_tiny": Component(partial(build_clip, True), ClipTinyOptions, requires=(CLIP_INPUT,)),   # tests, smoke runs
}


def build_model(options: ModelOptions, num_classes: int, class_names=None, trained_state=None) -> torch.nn.Module:
    """`class_names` (label order) are read by the models whose head starts from text (CLIP).
    `trained_state`: the state dict of a trained model that the caller loads next (eval, OOD,
    analysis): a model may then skip what that state replaces (CLIP: its pretrained weights file
    and the text tower that initialises its head)."""
    model = lookup(MODELS, options.name, "model.name", "model").build(options, num_classes, class_names,
                                                                      trained_state)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model
