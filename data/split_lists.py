"""Split lists of ImageNet-LT and iNaturalist 2018: lines `<relative/path> <label>`.

The format of the public lists (classifier-balancing, Focal-SAM's data_txt/): one image per line,
a path relative to the data root, a space, an integer label in 0..C-1. Paths may contain spaces
(the label is the last field). Errors name the file and the line.
"""
import os
from typing import List, Tuple

from engine.errors import UserError


def check_relative(path: str, where: str) -> None:
    """Refuse paths that leave the data root: absolute, `..` components, or a drive letter."""
    norm = path.replace("\\", "/")
    if os.path.isabs(path) or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UserError(f"{where}: absolute path '{path}' is not allowed; list paths are relative to data.root")
    if ".." in norm.split("/"):
        raise UserError(f"{where}: path '{path}' leaves the data root ('..'); list paths must stay under data.root")


def read_list(path: str, num_classes: int = None) -> Tuple[List[str], List[int]]:
    """-> (relative paths, labels). Stops at the first bad line with its number."""
    if not os.path.isfile(path):
        raise UserError(f"split list not found: {path}")
    paths, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            rel, sep, label = line.rpartition(" ")
            where = f"{path}:{number}"
            if not sep or not rel.strip():
                raise UserError(f"{where}: expected '<relative/path> <label>', got {line[:80]!r}")
            try:
                y = int(label)
            except ValueError:
                raise UserError(f"{where}: label {label!r} is not an integer") from None
            if y < 0 or (num_classes is not None and y >= num_classes):
                raise UserError(f"{where}: label {y} is outside 0..{(num_classes or 1) - 1}")
            check_relative(rel.strip(), where)
            paths.append(rel.strip())
            labels.append(y)
    if not paths:
        raise UserError(f"{path} holds no images")
    return paths, labels


def class_counts(labels: List[int], num_classes: int) -> List[int]:
    counts = [0] * num_classes
    for y in labels:
        counts[y] += 1
    return counts
