"""A deterministic long-tailed set of small random images, for smoke runs and tests.

Each class has a fixed random prototype image; a sample is 0.6 * prototype + 0.4 * noise, so
the task is learnable in a few steps. Counts follow the CIFAR-LT profile. The data never depend
on the training seed (like CIFAR-LT's fixed subset seed 0).
"""
from dataclasses import dataclass
from typing import List

import numpy as np

from core.options import opt, require
from data.arrays import check_profile, in_memory_splits, long_tailed_counts
from data.options import DataSplits, InMemoryOptions, check_image_size, check_num_classes

MAX_SYNTHETIC = 100_000           # images per class that the synthetic set makes in memory


@dataclass(frozen=True)
class SyntheticOptions(InMemoryOptions):
    imb_factor: float = opt(100.0, "n_max / n_min of the long-tailed profile")
    num_classes: int = opt(10, "number of classes (list datasets: every label must be below it)")
    image_size: int = opt(16, "image side fed to the network, pixels (list datasets' paper configs: 224)")
    max_per_class: int = opt(100, "n_0, the head class's training count")
    test_per_class: int = opt(10, "test images per class")

    def check(self) -> None:
        super().check()
        check_num_classes(self.num_classes)
        check_image_size(self.image_size)
        for key in ("max_per_class", "test_per_class"):   # the set is made in memory
            require(key, 1 <= getattr(self, key) <= MAX_SYNTHETIC, f"must be 1..{MAX_SYNTHETIC:,}", getattr(self, key))
        check_profile(self.max_per_class, self.num_classes, self.imb_factor, self.name)


def synthetic_counts(o: SyntheticOptions) -> List[int]:
    return long_tailed_counts(o.max_per_class, o.num_classes, o.imb_factor)


def build_synthetic(o: SyntheticOptions, seed: int) -> DataSplits:
    arrays = synthetic_lt(o.num_classes, o.image_size, o.max_per_class, o.imb_factor, o.test_per_class)
    return in_memory_splits(arrays, o.augment, seed, o.preprocess)


def synthetic_lt(num_classes: int, image_size: int, max_per_class: int, imb_factor: float, test_per_class: int):
    rng = np.random.RandomState(0)
    shape = (image_size, image_size, 3)
    protos = rng.uniform(0, 255, size=(num_classes,) + shape)
    counts = long_tailed_counts(max_per_class, num_classes, imb_factor)

    def draw(per_class):
        labels = np.concatenate([np.full(n, k, dtype=np.int64) for k, n in enumerate(per_class)])
        noise = rng.uniform(0, 255, size=(len(labels),) + shape)
        return (0.6 * protos[labels] + 0.4 * noise).astype(np.uint8), labels

    train_x, train_y = draw(counts)
    test_x, test_y = draw([test_per_class] * num_classes)
    names = [f"class_{k}" for k in range(num_classes)]
    return train_x, train_y, test_x, test_y, names, counts
