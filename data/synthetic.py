"""A deterministic long-tailed set of small random images, for smoke runs and tests.

Each class has a fixed random prototype image; a sample is 0.6 * prototype + 0.4 * noise, so
the task is learnable in a few steps. Counts follow the CIFAR-LT profile. The data never depend
on the training seed (like CIFAR-LT's fixed subset seed 0).
"""
import numpy as np

from data.arrays import long_tailed_counts


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
