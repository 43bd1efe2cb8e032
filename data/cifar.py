"""CIFAR-10-LT and CIFAR-100-LT from the standard pickle layout that torchvision downloads:

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

The training set is subsampled to the long-tailed profile (data/arrays.py); the test set stays
balanced. Missing files are downloaded when `download` is on and the network allows.
"""
import os
import pickle
from dataclasses import dataclass
from typing import List

import numpy as np
import torchvision

from core.errors import UserError
from core.options import opt
from data.arrays import in_memory_splits, long_tailed_counts, long_tailed_indices
from data.options import DataSplits, InMemoryOptions

SPECS = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names",
                    n_max=5000, num_classes=10, source=torchvision.datasets.CIFAR10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", n_max=500, num_classes=100,
                     source=torchvision.datasets.CIFAR100),
}


def _layout(spec) -> str:
    files = ", ".join(spec["train"] + spec["test"] + [spec["meta"]])
    return f"<data.root>/{spec['folder']}/{{{files}}}"


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # truncated or foreign file: say which one
        raise UserError(f"cannot read {path} as a CIFAR pickle ({type(e).__name__}: {e}); "
                        "delete the folder and download again") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _download(root: str, spec) -> None:
    src = spec["source"]
    try:
        torchvision.datasets.utils.download_and_extract_archive(src.url, root, filename=src.filename, md5=src.tgz_md5)
    except Exception as e:
        raise UserError(f"{spec['folder']} not found under {os.path.abspath(root)} and the download failed "
                        f"({type(e).__name__}); place the files as {_layout(spec)} and set data.root") from None


def load_cifar(name: str, root: str, download: bool):
    """-> (train images (N,32,32,3) uint8, train labels, test images, test labels, class names)."""
    spec = SPECS[name]
    folder = os.path.join(root, spec["folder"])
    needed = [os.path.join(folder, f) for f in spec["train"] + spec["test"] + [spec["meta"]]]
    if not all(os.path.isfile(p) for p in needed):
        if not download:
            raise UserError(f"{name} not found: expected {_layout(spec)} with data.root={os.path.abspath(root)}; "
                            "set data.root to the folder that holds it, or data.download=true")
        _download(root, spec)

    def read(files):
        parts = [_unpickle(os.path.join(folder, f)) for f in files]
        try:
            x = np.concatenate([np.asarray(p["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for p in parts])
            y = np.concatenate([np.asarray(p[spec["label_key"]], dtype=np.int64) for p in parts])
        except (KeyError, ValueError) as e:
            raise UserError(f"{folder} does not hold CIFAR pickles in the standard layout ({e})") from None
        return x.transpose(0, 2, 3, 1), y

    train_x, train_y = read(spec["train"])
    test_x, test_y = read(spec["test"])
    names = [n.decode() if isinstance(n, bytes) else n for n in _unpickle(os.path.join(folder, spec["meta"]))[spec["names_key"]]]
    return train_x, train_y, test_x, test_y, names


def cifar_lt(name: str, root: str, download: bool, imb_factor: float):
    """The long-tailed training subset and the balanced test set, with class counts."""
    spec = SPECS[name]
    train_x, train_y, test_x, test_y, names = load_cifar(name, root, download)
    counts = long_tailed_counts(spec["n_max"], spec["num_classes"], imb_factor)
    keep = long_tailed_indices(train_y, counts, seed=0)
    return train_x[keep], train_y[keep], test_x, test_y, names, counts


@dataclass(frozen=True)
class CifarOptions(InMemoryOptions):
    download: bool = opt(True, "fetch the CIFAR pickles into root when missing and the network allows")
    imb_factor: float = opt(100.0, "n_max / n_min of the long-tailed profile (10, 50, 100, 200)")


def cifar_counts(name: str, o: CifarOptions) -> List[int]:
    """The training counts of CIFAR-{10,100}-LT at o.imb_factor, without reading the files."""
    return long_tailed_counts(SPECS[name]["n_max"], SPECS[name]["num_classes"], o.imb_factor)


def build_cifar(name: str, o: CifarOptions, seed: int) -> DataSplits:
    return in_memory_splits(cifar_lt(name, o.root, o.download, o.imb_factor), o.augment, seed)
