"""Class groups and deterministic subsets of the training set.

A group is `head`, `medium`, `tail` (the masks of the run's data.head_threshold /
data.tail_threshold, as in the reports), `all`, or a comma-separated list of class indices or
class names (`0,1,2`, `airplane,ship`).
"""
from typing import Dict, List, Sequence

import numpy as np

from core.errors import UserError

NAMED = ("head", "medium", "tail", "all")


def resolve_group(spec: str, masks: Dict[str, np.ndarray], class_names: Sequence[str]) -> List[int]:
    """-> the sorted class indices of group `spec`; UserError for an unknown or empty group."""
    num_classes = len(class_names)
    if spec == "all":
        return list(range(num_classes))
    if spec in masks:
        classes = [int(k) for k in np.flatnonzero(masks[spec])]
        if not classes:
            raise UserError(f"group '{spec}' holds no class for this run's thresholds (data.head_threshold / "
                            "data.tail_threshold); choose another group or list classes, e.g. 0,1,2")
        return classes
    return _class_list(spec, class_names)


def _class_list(spec: str, class_names: Sequence[str]) -> List[int]:
    items = [s.strip() for s in spec.split(",")]
    if not spec.strip() or not all(items):
        raise UserError(f"bad class list '{spec}': give head, medium, tail, all, or classes separated by commas")
    index = {name: k for k, name in enumerate(class_names)}
    classes = []
    for item in items:
        if item.lstrip("-").isdigit():
            k = int(item)
            if not 0 <= k < len(class_names):
                raise UserError(f"class {k} in '{spec}' is out of range: this run has classes 0..{len(class_names) - 1}")
        elif item in index:
            k = index[item]
        else:
            raise UserError(f"unknown group or class '{item}' in '{spec}': use {', '.join(NAMED)}, class indices "
                            f"0..{len(class_names) - 1}, or class names such as {class_names[0]!r}")
        classes.append(k)
    if len(set(classes)) != len(classes):
        raise UserError(f"class list '{spec}' names a class twice")
    return sorted(classes)


def group_subset(labels: np.ndarray, classes: Sequence[int], size: int, seed: int) -> np.ndarray:
    """Up to `size` training indices drawn uniformly without replacement from the group's samples
    (so classes keep their training proportions), sorted; all of them when the group is smaller."""
    pool = np.flatnonzero(np.isin(np.asarray(labels), np.asarray(classes)))
    if size <= 0:
        raise UserError(f"the subset size must be >= 1, got {size}")
    if len(pool) <= size:
        return pool
    return np.sort(np.random.default_rng(seed).choice(pool, size, replace=False))


def per_class_subset(labels: np.ndarray, classes: Sequence[int], per_class: int, seed: int) -> Dict[int, np.ndarray]:
    """Up to `per_class` training indices of each class, drawn with one seeded generator."""
    if per_class <= 0:
        raise UserError(f"the samples per class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = {}
    for k in classes:
        pool = np.flatnonzero(labels == k)
        out[k] = pool if len(pool) <= per_class else np.sort(rng.choice(pool, per_class, replace=False))
    return out
