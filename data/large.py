"""ImageNet-LT and iNaturalist 2018: the list datasets' options and builders.

Both read `<relative path> <label>` split lists (data_txt/, data/split_lists.py) joined to
`data.root`, and differ only in normalisation, colour jitter and how the train list is made.
"""
import os
from dataclasses import dataclass, replace
from functools import partial
from typing import List, Literal, Tuple

from core.errors import UserError
from core.options import opt
from data.transforms import CLIP_MEAN, CLIP_STD
from data.listfile import IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN, INAT_STD, ListDataset, project_path, read_class_names
from data.options import DataOptions, DataSplits, check_image_size, check_num_classes
from data.split_lists import class_counts, read_list


@dataclass(frozen=True)
class ListOptions(DataOptions):
    num_classes: int = opt(10, "labels must be < this (ImageNet-LT 1000, iNaturalist 8142)")
    image_size: int = opt(16, "crop fed to the network (224 in the paper configs)")
    train_list: str = opt("", "training split list, relative to the repository unless absolute")
    test_list: str = opt("", "test split list, e.g. data_txt/ImageNet_LT/ImageNet_LT_test.txt")
    class_names: str = opt("", "classnames.txt / categories.json (reports only)")
    decode: Literal["pil", "torchvision", "device"] = opt("pil", "where images are decoded (data/listfile.py)")
    check_files: bool = opt(False, "check that every listed image exists before training")

    def check(self) -> None:
        super().check()
        check_num_classes(self.num_classes)
        check_image_size(self.image_size)

    def in_process(self) -> "ListOptions":
        return replace(super().in_process(), decode="pil" if self.decode == "device" else self.decode)


@dataclass(frozen=True)
class ListPreset:
    """What differs between the list datasets: normalisation, colour jitter, how to make the train
    list, and the CLIP test resize (shorter side, as a multiple of the crop)."""
    mean: tuple
    std: tuple
    jitter: float
    make_train_list: str
    clip_test_resize: Tuple[int, int]   # (a, b): shorter side = crop * a // b


# The official Focal-SAM CLIP test transforms (github.com/scongl/Focal-SAM): ImageNet-LT resizes the
# shorter side to the crop (datasets/imagenet_clip.py: Resize(resolution)), iNaturalist to 8/7 of
# it (datasets/inaturalist_clip.py: Resize(resolution * 8 // 7), 256 for 224), then CenterCrop.
PRESETS = {
    "imagenet_lt": ListPreset(IMAGENET_MEAN, IMAGENET_STD, 0.4, "python scripts/get_imagenet_lt_list.py", (1, 1)),
    "inat2018": ListPreset(INAT_MEAN, INAT_STD, 0.0, "python scripts/make_inat2018_lists.py --train-json "
                           "train2018.json --val-json val2018.json (or --fetch)", (8, 7)),
}


def _list_path(o: ListOptions, key: str, preset: ListPreset) -> str:
    given = getattr(o, key)
    if not given:
        raise UserError(f"set data.{key} to the split list (see configs/_base/ for the paths)")
    path = project_path(given)
    if not os.path.isfile(path):
        how = f"make it with: {preset.make_train_list}" if key == "train_list" else "it ships in data_txt/"
        raise UserError(f"data.{key} {given} not found; {how}")
    return path


def list_counts(name: str, o: ListOptions) -> List[int]:
    """Training counts from the train list (no image is read); an empty class is refused."""
    path = _list_path(o, "train_list", PRESETS[name])
    counts = class_counts(read_list(path, o.num_classes)[1], o.num_classes)
    empty = [k for k, n in enumerate(counts) if n == 0]
    if empty:
        raise UserError(f"{path}: class {empty[0]} has no training image ({len(empty)} empty classes); "
                        f"check data.num_classes={o.num_classes}")
    return counts


def build_list_dataset(name: str, o: ListOptions, seed: int) -> DataSplits:
    preset = PRESETS[name]
    counts = list_counts(name, o)
    if not os.path.isdir(o.root):
        raise UserError(f"data.root={o.root} is not a folder: put the {name} images there "
                        "(README, 'Large datasets') or set data.root")
    make = partial(_split, o, preset, seed)
    train, test = make("train_list", True), make("test_list", False)
    if o.check_files:
        train.check_files()
        test.check_files()
    return DataSplits(train, test, counts, read_class_names(o.class_names, o.num_classes))


def list_transform(o: ListOptions, preset: ListPreset) -> dict:
    """Normalisation, jitter and test resize under data.preprocess. `clip`: the official
    Focal-SAM CLIP pipeline (CLIP mean/std, no colour jitter, the dataset's test resize)."""
    if o.preprocess == "clip":
        a, b = preset.clip_test_resize
        resize = o.image_size * a // b
        return dict(mean=CLIP_MEAN, std=CLIP_STD, jitter=0.0, eval_resize=resize)
    return dict(mean=preset.mean, std=preset.std, jitter=preset.jitter, eval_resize=None)


def _split(o: ListOptions, preset: ListPreset, seed: int, key: str, train: bool) -> ListDataset:
    tf = list_transform(o, preset)
    return ListDataset(o.root, _list_path(o, key, preset), o.num_classes, train, o.image_size, tf["mean"],
                       tf["std"], tf["jitter"] if train else 0.0, o.decode, seed, eval_resize=tf["eval_resize"])
