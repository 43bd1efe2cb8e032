"""Dataset registry: YAML `data.name` -> builder(cfg: DataConfig, seed) -> DataSplits.

A builder returns the training and test datasets (items: (image tensor, label)), the training
class counts and the class names.
"""
import os
from dataclasses import dataclass
from typing import List

from data.arrays import ArrayDataset, long_tailed_counts, long_tailed_indices
from data.cifar import SPECS, cifar_lt
from data.listfile import (IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN, INAT_STD, ListDataset, project_path,
                           read_class_names)
from data.split_lists import class_counts, read_list
from data.synthetic import synthetic_lt
from data.transforms import CLIP_MEAN, CLIP_STD, CifarTest, CifarTrain, ClipTest, ClipTrain
from core.errors import UserError
from core.registry import Component, lookup


@dataclass
class DataSplits:
    train: object
    test: object
    class_counts: List[int]
    class_names: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


# data.preprocess -> (train transform, test transform) of the in-memory sets (CIFAR, synthetic).
ARRAY_TRANSFORMS = {"standard": (CifarTrain, CifarTest), "clip": (ClipTrain, ClipTest)}


def _in_memory(arrays, augment: bool, seed: int, preprocess: str = "standard") -> DataSplits:
    train_x, train_y, test_x, test_y, names, counts = arrays
    train_cls, test_cls = ARRAY_TRANSFORMS[preprocess]
    train_tf = train_cls() if augment else test_cls()
    return DataSplits(ArrayDataset(train_x, train_y, train_tf, seed), ArrayDataset(test_x, test_y, test_cls(), seed),
                      [int(c) for c in counts], list(names))


def _cifar(name):
    def build(cfg, seed):
        return _in_memory(cifar_lt(name, cfg.root, cfg.download, cfg.imb_factor), cfg.augment, seed, cfg.preprocess)
    return build


def _synthetic(cfg, seed):
    arrays = synthetic_lt(cfg.num_classes, cfg.image_size, cfg.max_per_class, cfg.imb_factor, cfg.test_per_class)
    return _in_memory(arrays, cfg.augment, seed, cfg.preprocess)


@dataclass(frozen=True)
class ListPreset:
    """What differs between the list datasets: normalisation, colour jitter, how to make the train list."""
    mean: tuple
    std: tuple
    jitter: float
    make_train_list: str


LIST_PRESETS = {
    "imagenet_lt": ListPreset(IMAGENET_MEAN, IMAGENET_STD, 0.4, "python scripts/get_imagenet_lt_list.py"),
    "inat2018": ListPreset(INAT_MEAN, INAT_STD, 0.0, "python scripts/make_inat2018_lists.py --train-json "
                           "train2018.json --val-json val2018.json (or --fetch)"),
}


def list_transform(cfg, preset: ListPreset) -> dict:
    """Normalisation, jitter and test resize of a list dataset under data.preprocess. `clip`: the
    official Focal-SAM CLIP pipeline (CLIP mean/std, no colour jitter, test resize = crop size)."""
    if cfg.preprocess == "clip":
        return dict(mean=CLIP_MEAN, std=CLIP_STD, jitter=0.0, eval_resize=cfg.image_size)
    return dict(mean=preset.mean, std=preset.std, jitter=preset.jitter, eval_resize=None)


def _list_path(cfg, key: str, preset: ListPreset) -> str:
    given = getattr(cfg, key)
    if not given:
        raise UserError(f"set data.{key} to the split list (see configs/_base/ for the paths)")
    path = project_path(given)
    if not os.path.isfile(path):
        how = f"make it with: {preset.make_train_list}" if key == "train_list" else "it ships in data_txt/"
        raise UserError(f"data.{key} {given} not found; {how}")
    return path


def _train_counts(cfg, preset: ListPreset) -> List[int]:
    path = _list_path(cfg, "train_list", preset)
    counts = class_counts(read_list(path, cfg.num_classes)[1], cfg.num_classes)
    empty = [k for k, n in enumerate(counts) if n == 0]
    if empty:
        raise UserError(f"{path}: class {empty[0]} has no training image ({len(empty)} empty classes); "
                        f"check data.num_classes={cfg.num_classes}")
    return counts


def _list_dataset(name: str):
    def build(cfg, seed):
        preset = LIST_PRESETS[name]
        counts = _train_counts(cfg, preset)
        if not os.path.isdir(cfg.root):
            raise UserError(f"data.root={cfg.root} is not a folder: put the {name} images there "
                            "(README, 'Large datasets') or set data.root")
        tf = list_transform(cfg, preset)
        make = lambda key, train: ListDataset(cfg.root, _list_path(cfg, key, preset), cfg.num_classes, train,
                                              cfg.image_size, tf["mean"], tf["std"], tf["jitter"] if train else 0.0,
                                              cfg.decode, seed, eval_resize=tf["eval_resize"])
        train, test = make("train_list", True), make("test_list", False)
        if cfg.check_files:
            train.check_files()
            test.check_files()
        return DataSplits(train, test, counts, read_class_names(cfg.class_names, cfg.num_classes))
    return build


_LIST_OPTIONS = ("num_classes", "image_size", "train_list", "test_list", "class_names", "decode", "check_files")

DATASETS = {
    "cifar10_lt": Component(_cifar("cifar10"), uses=("download", "imb_factor")),
    "cifar100_lt": Component(_cifar("cifar100"), uses=("download", "imb_factor")),
    "synthetic": Component(_synthetic, uses=("imb_factor", "num_classes", "image_size", "max_per_class",
                                             "test_per_class")),
    "imagenet_lt": Component(_list_dataset("imagenet_lt"), uses=_LIST_OPTIONS),
    "inat2018": Component(_list_dataset("inat2018"), uses=_LIST_OPTIONS),
}

# The training class counts without loading any image (benchmarks, table scripts).
CLASS_COUNTS = {
    "cifar10_lt": lambda cfg: long_tailed_counts(SPECS["cifar10"]["n_max"], SPECS["cifar10"]["num_classes"], cfg.imb_factor),
    "cifar100_lt": lambda cfg: long_tailed_counts(SPECS["cifar100"]["n_max"], SPECS["cifar100"]["num_classes"], cfg.imb_factor),
    "synthetic": lambda cfg: long_tailed_counts(cfg.max_per_class, cfg.num_classes, cfg.imb_factor),
    "imagenet_lt": lambda cfg: _train_counts(cfg, LIST_PRESETS["imagenet_lt"]),
    "inat2018": lambda cfg: _train_counts(cfg, LIST_PRESETS["inat2018"]),
}


def class_counts_only(cfg) -> List[int]:
    lookup(DATASETS, cfg.name, "data.name", "dataset")
    return CLASS_COUNTS[cfg.name](cfg)


def build_data(cfg, seed: int) -> DataSplits:
    return lookup(DATASETS, cfg.name, "data.name", "dataset").build(cfg, seed)
