"""Classifier heads and the model options every backbone shares. Every model keeps its head at
`model.classifier` (CC-SAM and LDAM reach it)."""
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.options import Checked, opt


@dataclass(frozen=True)
class ModelOptions(Checked):
    """Keys of the `model` section; a backbone with keys of its own extends this class."""
    name: str = opt("resnet32", "the backbone (registry name)")
    classifier: Literal["linear", "cosine"] = opt("linear", "head: linear, or cosine (LDAM's normalised head)")
    channels_last: bool = opt(False, "NHWC memory format (faster convolutions on recent GPUs)")

    # What the engine asks every model (a backbone's options class answers for itself):
    stackable = True     # several seeds can train as one StackedModels (vmap over the module)
    precision = "fp32"   # the weights' own dtype (CLIP can keep them in fp16)


class CosineClassifier(nn.Module):
    """Cosine-similarity head of LDAM (Cao et al. 2019, their `NormedLinear`): logits are
    cos(feature, class weight) in [-1, 1]; the loss multiplies by its scale s."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        # LDAM's initialisation: uniform, columns renormalised (a unit-norm start for each class).
        self.weight.data.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


HEADS = {"linear": nn.Linear, "cosine": CosineClassifier}


def build_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    return HEADS[kind](in_features, num_classes)


class Classifier(nn.Module):
    """Base of every model here: `forward_features` -> (B, D), then `self.classifier`.

    With `channels_last` set (models.build_model does it, with the weights), inputs are turned
    NHWC on the way in, so callers need not know the memory format.
    """

    classifier: nn.Module
    channels_last: bool = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.forward_features(x)
        logits = self.classifier(feats)
        return (feats, logits) if return_features else logits
