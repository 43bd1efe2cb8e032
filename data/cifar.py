"""CIFAR-10-LT and CIFAR-100-LT from the standard pickle layout that torchvision downloads:

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

The training set is subsampled to the long-tailed profile (data/arrays.py); the test set stays
balanced. Missing files are downloaded when `download` is on and the network allows.

The pickles are read by `CifarUnpickler`, which builds only what these files hold, so a crafted
file dropped into a data folder cannot run code when it is loaded (plain `pickle.load` would
call whatever the file names).
"""
import codecs
import os
import pickle
from dataclasses import dataclass
from typing import List

import numpy as np
import torchvision

from core.errors import UserError, brief
from core.options import opt
from data.arrays import check_profile, in_memory_splits, long_tailed_counts, long_tailed_indices
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


def _reconstruct():
    """numpy's array reconstruction function (numpy._core in numpy 2, numpy.core before)."""
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


# Every global that the CIFAR pickles name: numpy's array reconstruction (the module path of the
# numpy that wrote the file: numpy.core in the originals, numpy._core from numpy 2), and
# _codecs.encode, which Python 3 writes for bytes at protocol 2. Dicts, lists, str, bytes and
# ints need no global. Nothing here runs code beyond building an array or bytes.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class Refused(pickle.UnpicklingError):
    """The file names something that a CIFAR pickle never holds."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickler that admits only ALLOWED_GLOBALS and refuses persistent ids and extensions."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise Refused(f"it names {module}.{name}, which a CIFAR pickle never holds "
                                         "(refused: loading it could run code)")
        return ALLOWED_GLOBALS[module, name]()

    def persistent_load(self, pid):
        raise Refused("it holds a persistent id, which a CIFAR pickle never holds")


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, encoding="bytes").load()
    except Refused as e:
        raise UserError(f"{path} is not a CIFAR pickle: {brief(e)}; delete it and download again") from None
    except Exception as e:  # truncated or foreign file: say which one
        raise UserError(f"cannot read {path} as a CIFAR pickle ({type(e).__name__}: {brief(e, 100)}); "
                        "delete the folder and download again") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} holds a {type(d).__name__}, not the dict of a CIFAR pickle; "
                        "delete the folder and download again")
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

    train_x, train_y = _read_split(folder, spec["train"], spec)
    test_x, test_y = _read_split(folder, spec["test"], spec)
    return train_x, train_y, test_x, test_y, _read_names(os.path.join(folder, spec["meta"]), spec)


def _layout_error(where: str, what: str) -> UserError:
    return UserError(f"{where} does not hold a CIFAR pickle in the standard layout ({what}); "
                     "delete the folder and download again")


def _read_split(folder: str, files, spec):
    """Images (N, 32, 32, 3) uint8 and labels (N,) of these batch files, each checked."""
    xs, ys = [], []
    for name in files:
        path = os.path.join(folder, name)
        part = _unpickle(path)
        try:
            x = np.asarray(part["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(part[spec["label_key"]], dtype=np.int64).reshape(-1)
        except KeyError as e:
            raise _layout_error(path, f"no {e.args[0]!r} entry") from None
        except (ValueError, TypeError) as e:
            raise _layout_error(path, brief(e, 100)) from None
        if len(x) != len(y):
            raise _layout_error(path, f"{len(x)} images but {len(y)} labels")
        if len(y) and not (0 <= y.min() and y.max() < spec["num_classes"]):
            raise _layout_error(path, f"labels must be 0..{spec['num_classes'] - 1}, found {y.min()}..{y.max()}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)


def _read_names(path: str, spec) -> list:
    names = _unpickle(path).get(spec["names_key"])
    if not isinstance(names, list) or len(names) != spec["num_classes"]:
        raise _layout_error(path, f"'{spec['names_key']}' must list {spec['num_classes']} class names")
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


def cifar_lt(name: str, root: str, download: bool, imb_factor: float):
    """The long-tailed training subset and the balanced test set, with class counts."""
    spec = SPECS[name]
    train_x, train_y, test_x, test_y, names = load_cifar(name, root, download)
    counts = long_tailed_counts(spec["n_max"], spec["num_classes"], imb_factor)
    try:
        keep = long_tailed_indices(train_y, counts, seed=0)
    except ValueError as e:  # a training set with fewer images than the profile asks for
        raise UserError(f"{os.path.join(root, spec['folder'])}: {e}; the full {name} training set has "
                        f"{spec['n_max']} images per class: download it again") from None
    return train_x[keep], train_y[keep], test_x, test_y, names, counts


@dataclass(frozen=True)
class CifarOptions(InMemoryOptions):
    download: bool = opt(True, "fetch the CIFAR pickles into root when missing and the network allows")
    imb_factor: float = opt(100.0, "n_max / n_min of the long-tailed profile (10, 50, 100, 200)")

    def check(self) -> None:
        super().check()
        spec = SPECS.get(self.name.removesuffix("_lt"))
        if spec is not None:
            check_profile(spec["n_max"], spec["num_classes"], self.imb_factor, self.name)


def cifar_counts(name: str, o: CifarOptions) -> List[int]:
    """The training counts of CIFAR-{10,100}-LT at o.imb_factor, without reading the files."""
    return long_tailed_counts(SPECS[name]["n_max"], SPECS[name]["num_classes"], o.imb_factor)


def build_cifar(name: str, o: CifarOptions, seed: int) -> DataSplits:
    return in_memory_splits(cifar_lt(name, o.root, o.download, o.imb_factor), o.augment, seed, o.preprocess)
