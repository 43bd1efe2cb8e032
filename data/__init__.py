"""Dataset registry: YAML `data.name` -> builder(cfg: DataConfig, seed) -> DataSplits.

A builder returns the training and test datasets (items: (image tensor, label)), the training
class counts and the class names.
"""
from dataclasses import dataclass
from typing import List

from data.arrays import ArrayDataset, long_tailed_counts, long_tailed_indices
from data.cifar import SPECS, cifar_lt
from data.synthetic import synthetic_lt
from data.transforms import CifarTest, CifarTrain
from engine.registry import Component, lookup


@dataclass
class DataSplits:
    train: object
    test: object
    class_counts: List[int]
    class_names: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


def _in_memory(arrays, augment: bool, seed: int) -> DataSplits:
    train_x, train_y, test_x, test_y, names, counts = arrays
    train_tf = CifarTrain() if augment else CifarTest()
    return DataSplits(ArrayDataset(train_x, train_y, train_tf, seed), ArrayDataset(test_x, test_y, CifarTest(), seed),
                      [int(c) for c in counts], list(names))


def _cifar(name):
    def build(cfg, seed):
        return _in_memory(cifar_lt(name, cfg.root, cfg.download, cfg.imb_factor), cfg.augment, seed)
    return build


def _synthetic(cfg, seed):
    arrays = synthetic_lt(cfg.num_classes, cfg.image_size, cfg.max_per_class, cfg.imb_factor, cfg.test_per_class)
    return _in_memory(arrays, cfg.augment, seed)


DATASETS = {
    "cifar10_lt": Component(_cifar("cifar10"), uses=("download", "imb_factor")),
    "cifar100_lt": Component(_cifar("cifar100"), uses=("download", "imb_factor")),
    "synthetic": Component(_synthetic, uses=("imb_factor", "num_classes", "image_size", "max_per_class",
                                             "test_per_class")),
}


# The training class counts without loading any image (benchmarks, table scripts).
CLASS_COUNTS = {
    "cifar10_lt": lambda cfg: long_tailed_counts(SPECS["cifar10"]["n_max"], SPECS["cifar10"]["num_classes"], cfg.imb_factor),
    "cifar100_lt": lambda cfg: long_tailed_counts(SPECS["cifar100"]["n_max"], SPECS["cifar100"]["num_classes"], cfg.imb_factor),
    "synthetic": lambda cfg: long_tailed_counts(cfg.max_per_class, cfg.num_classes, cfg.imb_factor),
}


def class_counts_only(cfg) -> List[int]:
    lookup(DATASETS, cfg.name, "data.name", "dataset")
    return CLASS_COUNTS[cfg.name](cfg)


def build_data(cfg, seed: int) -> DataSplits:
    return lookup(DATASETS, cfg.name, "data.name", "dataset").build(cfg, seed)
