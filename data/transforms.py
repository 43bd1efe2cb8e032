"""Transform presets. CIFAR augmentation draws its randomness from a generator keyed on
(seed, epoch, sample index), so a run gives the same images whatever the number of loader
workers or processes (DDP) and resumes exactly."""
import numpy as np
import torch

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
