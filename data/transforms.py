"""Transform presets. CIFAR augmentation draws its randomness from a generator keyed on
(seed, epoch, sample index), so a run gives the same images whatever the number of loader
workers or processes (DDP) and resumes exactly."""
import numpy as np
import torch

from data.augment import TrainParams, apply_eval, apply_train, draw_crop, to_normalized

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class CifarTrain:
    """Random crop (zero padding 4) + horizontal flip + normalise: (H, W, 3) uint8 -> (3, H, W) float."""

    def __init__(self, padding: int = 4, mean=CIFAR_MEAN, std=CIFAR_STD):
        self.padding = padding
        self.normalize = CifarTest(mean, std)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        h, w, _ = img.shape
        p = self.padding
        padded = np.zeros((h + 2 * p, w + 2 * p, 3), dtype=img.dtype)
        padded[p:p + h, p:p + w] = img
        top, left = rng.integers(0, 2 * p + 1, size=2)
        out = padded[top:top + h, left:left + w]
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return self.normalize(out)


class CifarTest:
    """Normalise only: (H, W, 3) uint8 -> (3, H, W) float32."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img: np.ndarray, rng=None) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std


# CLIP's input normalisation (Radford et al. 2021; the constants of OpenAI's `clip` package).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224   # ViT-B/16's input side


class ClipTrain:
    """CLIP fine-tuning augmentation of the official Focal-SAM / LIFT code for in-memory images
    (CIFAR, synthetic): RandomResizedCrop to `size` (scale 0.08-1, torchvision's rule) of the
    small image, horizontal flip, CLIP normalisation: (H, W, 3) uint8 -> (3, size, size) float."""

    def __init__(self, size: int = CLIP_SIZE):
        self.size = size

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)          # (3, H, W) uint8
        return to_normalized(apply_train(x, self.draw(rng, x.shape[1], x.shape[2]), self.size), CLIP_MEAN, CLIP_STD)

    @staticmethod
    def draw(rng: np.random.Generator, height: int, width: int) -> TrainParams:
        """One sample's crop box and flip (data/device_loader.py draws the same for each index)."""
        top, left, h, w = draw_crop(rng, width, height)
        return TrainParams(top, left, h, w, flip=bool(rng.random() < 0.5))


class ClipTest:
    """Resize the shorter side to `size`, centre crop `size`, CLIP normalisation (the official
    Focal-SAM CLIP test transform; LIFT resizes to size * 8/7 first). CIFAR: the whole image."""

    def __init__(self, size: int = CLIP_SIZE):
        self.size = size

    def __call__(self, img: np.ndarray, rng=None) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        return to_normalized(apply_eval(x, self.size, resize=self.size), CLIP_MEAN, CLIP_STD)
