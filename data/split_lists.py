"""Split lists of ImageNet-LT and iNaturalist 2018: lines `<relative/path> <label>`.

The format of the public lists (classifier-balancing, Focal-SAM's data_txt/): one image per line,
a path relative to the data root, a space, an integer label in 0..C-1. Paths may contain spaces
(the label is the last field). Errors name the file and the line.

`check_split` compares a parsed list with what the public release holds (`Expected`), so a
truncated download or a list of another dataset stops before anything trains on it.
"""
import io
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from core.errors import UserError


def check_relative(path: str, where: str) -> None:
    """Refuse paths that leave the data root: absolute, `..` components, or a drive letter."""
    norm = path.replace("\\", "/")
    if os.path.isabs(path) or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UserError(f"{where}: absolute path '{path}' is not allowed; list paths are relative to data.root")
    if ".." in norm.split("/"):
        raise UserError(f"{where}: path '{path}' leaves the data root ('..'); list paths must stay under data.root")


def parse_list(lines: Iterable[str], source: str, num_classes: int = None) -> Tuple[List[str], List[int]]:
    """-> (relative paths, labels) of the lines of a list; errors name `source` and the line number.

    `source` is a file path or a URL, so a downloaded list is checked before it is written anywhere.
    """
    paths, labels = [], []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        rel, sep, label = line.rpartition(" ")
        where = f"{source}:{number}"
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
        raise UserError(f"{source} holds no images")
    return paths, labels


def read_list(path: str, num_classes: int = None) -> Tuple[List[str], List[int]]:
    """-> (relative paths, labels). Stops at the first bad line with its number."""
    if not os.path.isfile(path):
        raise UserError(f"split list not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        raise UserError(f"{path} is a binary file, not a split list of '<relative/path> <label>' lines")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                        "save it as UTF-8") from None
    return parse_list(io.StringIO(text, newline=None), path, num_classes)  # universal newlines, as open()


def class_counts(labels: List[int], num_classes: int) -> List[int]:
    counts = [0] * num_classes
    for y in labels:
        counts[y] += 1
    return counts


@dataclass(frozen=True)
class Expected:
    """What a split list of the public release holds; a None field is not checked."""
    lines: Optional[int] = None       # images (non-blank lines)
    classes: Optional[int] = None     # labels are 0..classes-1 and every one has an image
    max_count: Optional[int] = None   # images of the largest class
    min_count: Optional[int] = None   # images of the smallest class


# Liu et al. 2019 (OLTR) ImageNet-LT: Pareto-sampled ImageNet-2012 train, 1280 down to 5 per class.
IMAGENET_LT_TRAIN = Expected(lines=115_846, classes=1000, max_count=1280, min_count=5)
# iNaturalist 2018 competition: train2018.json and val2018.json (3 images per class).
INAT2018_TRAIN = Expected(lines=437_513, classes=8142)
INAT2018_VAL = Expected(lines=24_426, classes=8142)


def check_split(paths: Sequence[str], labels: Sequence[int], expect: Expected, source: str) -> None:
    """Raise UserError naming `source` unless the list matches `expect` and every path is relative."""
    for index, path in enumerate(paths, 1):
        check_relative(path, f"{source}: image {index}")
    if expect.lines is not None and len(labels) != expect.lines:
        raise UserError(f"{source} has {len(labels):,} images, expected {expect.lines:,} "
                        f"(a truncated download or another list)")
    if expect.classes is not None:
        _check_classes(labels, expect.classes, source)
    if expect.max_count is not None or expect.min_count is not None:
        _check_extremes(Counter(labels), expect, source)


def _check_classes(labels: Sequence[int], num_classes: int, source: str) -> None:
    outside = [y for y in labels if not 0 <= y < num_classes]
    if outside:
        raise UserError(f"{source}: label {outside[0]} is outside 0..{num_classes - 1}")
    missing = [k for k, n in enumerate(class_counts(labels, num_classes)) if n == 0]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{source}: class {shown} has no image; expected all {num_classes:,} classes")


def _check_extremes(counts: Counter, expect: Expected, source: str) -> None:
    # Empty classes are _check_classes' report; the extremes are over classes that have images.
    by_size = sorted((n, k) for k, n in counts.items())
    (smallest, k_min), (largest, k_max) = by_size[0], by_size[-1]
    if expect.max_count is not None and largest != expect.max_count:
        raise UserError(f"{source}: the largest class (label {k_max}) has {largest:,} images, "
                        f"expected {expect.max_count:,}")
    if expect.min_count is not None and smallest != expect.min_count:
        raise UserError(f"{source}: the smallest class (label {k_min}) has {smallest:,} images, "
                        f"expected {expect.min_count:,}")


def format_list(paths: Sequence[str], labels: Sequence[int]) -> str:
    """The text of a list file: one `<path> <label>` line per image, each ending in a newline."""
    return "".join(f"{p} {y}\n" for p, y in zip(paths, labels))


def first_difference(ours: Sequence[str], theirs: Sequence[str]) -> Optional[int]:
    """1-based number of the first line where the two lists differ (a missing line counts), or None."""
    for number, (a, b) in enumerate(zip(ours, theirs), 1):
        if a != b:
            return number
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs)) + 1


def summary(labels: Sequence[int]) -> str:
    """'115,846 images, 1,000 classes, 1,280 to 5 per class' for the message after a check."""
    counts = Counter(labels).values()
    return f"{len(labels):,} images, {len(counts):,} classes, {max(counts):,} to {min(counts):,} per class"
