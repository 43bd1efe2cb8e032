"""Dataset registry: YAML `data.name` -> builder(options, seed) -> DataSplits.

A dataset is one file holding its options class (extending `data.options.DataOptions`), its
builder and a function giving its training class counts without reading images, plus one line
here.
"""
from functools import partial
from typing import List

from core.registry import Component, lookup
from data.cifar import CifarOptions, build_cifar, cifar_counts
from data.large import ListOptions, build_list_dataset, list_counts
from data.options import DataOptions, DataSplits
from data.synthetic import SyntheticOptions, build_synthetic, synthetic_counts

DATASETS = {
    "cifar10_lt": Component(partial(build_cifar, "cifar10"), CifarOptions, class_counts=partial(cifar_counts, "cifar10")),
    "cifar100_lt": Component(partial(build_cifar, "cifar100"), CifarOptions, class_counts=partial(cifar_counts, "cifar100")),
    "synthetic": Component(build_synthetic, SyntheticOptions, class_counts=synthetic_counts),
    "imagenet_lt": Component(partial(build_list_dataset, "imagenet_lt"), ListOptions,
                             class_counts=partial(list_counts, "imagenet_lt")),
    "inat2018": Component(partial(build_list_dataset, "inat2018"), ListOptions, class_counts=partial(list_counts, "inat2018")),
}


def build_data(options: DataOptions, seed: int) -> DataSplits:
    return lookup(DATASETS, options.name, "data.name", "dataset").build(options, seed)


def class_counts_only(options: DataOptions) -> List[int]:
    """The training class counts without loading any image (benchmarks, table scripts)."""
    return lookup(DATASETS, options.name, "data.name", "dataset").class_counts(options)
