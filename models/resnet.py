"""ResNet-50 for ImageNet-LT and iNaturalist 2018: torchvision's `resnet50(weights=None)`, trained
from scratch as in the official Focal-SAM runs, with its final layer moved to `.classifier` so
that CC-SAM and LDAM's cosine head reach it under the same name as on ResNet-32."""
import torch
import torch.nn as nn
import torchvision

from models.heads import Classifier, CosineClassifier


class TorchvisionResNet(Classifier):
    def __init__(self, arch: str, num_classes: int, classifier: str = "linear"):
        super().__init__()
        self.backbone = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        head = self.backbone.fc
        self.backbone.fc = nn.Identity()
        # Keep torchvision's initialised Linear (same init as the official runs); swap for cosine.
        self.classifier = head if classifier == "linear" else CosineClassifier(head.in_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 2048)
        return self.backbone(x)
