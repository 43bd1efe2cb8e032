"""Augmentation of the large sets (README, "Large datasets": the official pipeline) in two steps:
draw one sample's random parameters from a generator keyed on (seed, epoch, index), then apply them.

Train: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) to `size`, horizontal flip, and for
ImageNet-LT ColorJitter(0.4, 0.4, 0.4, hue 0) in a random order; test: resize the shorter side to
`size * 256 / 224`, centre crop `size`. `apply_*` work on a PIL image or a uint8 (3, H, W) tensor
on any device (torchvision.transforms.v2.functional dispatches on the type), so the same
parameters give the same augmentation whether an image is decoded by PIL or torchvision in a
worker, or on the GPU; and a resumed or re-sharded run sees the same images.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


@dataclass(frozen=True)
class TrainParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: Tuple[Tuple[int, float], ...] = ()   # (op index into JITTER_OPS, factor), in order


def draw_crop(rng: np.random.Generator, width: int, height: int, scale=(0.08, 1.0),
              ratio=(3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop: the sampling rule of torchvision's
    RandomResizedCrop (10 tries at a random area and log-uniform aspect ratio, then the centre
    crop at the nearest allowed ratio), drawn from `rng` instead of the global generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_train_params(rng: np.random.Generator, width: int, height: int, jitter: float = 0.0) -> TrainParams:
    top, left, h, w = draw_crop(rng, width, height)
    flip = bool(rng.random() < 0.5)
    ops = ()
    if jitter > 0:
        factors = rng.uniform(max(0.0, 1 - jitter), 1 + jitter, size=3)
        ops = tuple((int(k), float(factors[k])) for k in rng.permutation(3))
    return TrainParams(top, left, h, w, flip, ops)


def apply_train(img, p: TrainParams, size: int):
    """Crop, resize to (size, size), flip, jitter: PIL image in, PIL out; tensor in, tensor out."""
    img = TF.resized_crop(img, p.top, p.left, p.height, p.width, [size, size], antialias=True)
    if p.flip:
        img = TF.horizontal_flip(img)
    for op, factor in p.jitter:
        img = JITTER_OPS[op](img, factor)
    return img


def eval_resize(size: int) -> int:
    """The shorter-side resize before the centre crop: 256 for a 224 crop."""
    return int(round(size * 256 / 224))


def apply_eval(img, size: int, resize: Optional[int] = None):
    """Shorter side to `resize` (default eval_resize(size)), then the centre `size` crop."""
    resize = eval_resize(size) if resize is None else resize
    return TF.center_crop(TF.resize(img, [resize], antialias=True), [size, size])


def to_normalized(img, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """PIL or uint8 (3, H, W) tensor -> float32 (3, H, W), (x / 255 - mean) / std."""
    if not isinstance(img, torch.Tensor):
        img = TF.pil_to_tensor(img)
    x = img.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x - m) / s
