"""In-memory image datasets (CIFAR-LT, synthetic): uint8 arrays plus labels."""
import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import OptionError
from core.options import require

from data.options import DataSplits
from data.transforms import CifarTest, CifarTrain, ClipTest, ClipTrain

# data.preprocess -> (train transform, test transform) of the in-memory sets (CIFAR, synthetic).
ARRAY_TRANSFORMS = {"standard": (CifarTrain, CifarTest), "clip": (ClipTrain, ClipTest)}


class SharedEpoch:
    """The epoch index in shared memory, so that persistent loader workers see set_epoch."""

    def __init__(self):
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])


class ArrayDataset(Dataset, SharedEpoch):
    """Images (N, H, W, 3) uint8 and labels (N,); sample i of epoch e is augmented with a
    generator seeded by (seed, e, i), independent of workers, ranks and visiting order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, seed: int = 0):
        SharedEpoch.__init__(self)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        return self.transform(self.images[i], rng), torch.tensor(self.labels[i])

    @property
    def targets(self) -> np.ndarray:
        return self.labels


def check_profile(n_max: int, num_classes: int, imb_factor: float, name: str) -> None:
    """The long-tailed profile leaves every class a training image (OptionError on imb_factor)."""
    require("imb_factor", imb_factor >= 1, "must be >= 1 (n_max / n_min of the long-tailed profile)", imb_factor)
    counts = long_tailed_counts(n_max, num_classes, imb_factor)
    empty = next((k for k, n in enumerate(counts) if n < 1), None)
    if empty is not None:
        raise OptionError("imb_factor", f"imbalance {imb_factor:g} leaves class {empty} of {name} with no training image "
                                        f"(n_k = int({n_max} * IF^(-k/(C-1)))); use an imb_factor of at most {n_max}")


def long_tailed_counts(n_max: int, num_classes: int, imb_factor: float) -> list:
    """n_k = int(n_max * IF^(-k / (C - 1))), class 0 the head (Cao et al. 2019, exp profile)."""
    if imb_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1, got {imb_factor}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imb_factor) ** (k / (num_classes - 1.0))) for k in range(num_classes)]


def long_tailed_indices(labels: np.ndarray, counts, seed: int = 0) -> np.ndarray:
    """For each class in order, shuffle its indices with one numpy RandomState(seed) stream and
    keep the first n_k: the subset of Cao et al.'s IMBALANCECIFAR (seed 0)."""
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels)
    keep = []
    for k, n in enumerate(counts):
        idx = np.where(labels == k)[0]
        if len(idx) < n:
            raise ValueError(f"class {k} has {len(idx)} images, fewer than the {n} asked for")
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)


def in_memory_splits(arrays, augment: bool, seed: int, preprocess: str = "standard") -> DataSplits:
    """DataSplits of (train x, train y, test x, test y, names, counts) arrays, with the CIFAR (or
    CLIP) transforms."""
    train_x, train_y, test_x, test_y, names, counts = arrays
    train_cls, test_cls = ARRAY_TRANSFORMS[preprocess]
    train_tf = train_cls() if augment else test_cls()
    return DataSplits(ArrayDataset(train_x, train_y, train_tf, seed), ArrayDataset(test_x, test_y, test_cls(), seed),
                      [int(c) for c in counts], list(names))
