"""Long-tail evaluation metrics, all in percent: balanced top-1 (mean of per-class accuracies),
Head / Medium / Tail group means by training count, and expected calibration error."""
from typing import Dict, Optional, Sequence

import numpy as np


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class in percent; NaN for a class with no test sample."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / total, np.nan)


def group_masks(class_counts: Sequence[int], head_threshold: float, tail_threshold: float) -> Dict[str, np.ndarray]:
    """head: n_k > head_threshold; tail: n_k < tail_threshold; medium: the rest (inclusive bounds)."""
    n = np.asarray(class_counts, dtype=np.float64)
    head, tail = n > head_threshold, n < tail_threshold
    return {"head": head, "medium": ~head & ~tail, "tail": tail}


def _mean_or_none(values: np.ndarray) -> Optional[float]:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE in percent: sum over equal-width confidence bins (lo, hi] of |B|/N * |acc(B) - conf(B)|."""
    confidences, correct = np.asarray(confidences, np.float64), np.asarray(correct, np.float64)
    if not np.isfinite(confidences).all():    # a diverged model: no bin to put it in
        return float("nan")
    bins = np.clip(np.ceil(confidences * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidences[sel].mean())
    return 100.0 * ece


BEST_KEYS = ("top1", "head", "medium", "tail")   # All and the groups the paper prints


def best_on_test(selection: Optional[dict], per_group: Optional[dict], report: dict, epoch: int):
    """The paper's model selection on the test set, kept beside the last-epoch headline.

    `selection`: the first evaluated epoch with the best top-1 (the official code's `is_best =
    acc1 > best_acc1`) with its Head / Medium / Tail at that epoch: {"epoch", "top1", "head",
    "medium", "tail"}. `per_group`: each of those its own best over the epochs, {key: {"value",
    "epoch"}}. A group without classes (None) has no best. Returns both, updated with `report`.
    """
    if selection is None or report["top1"] > selection["top1"]:
        selection = {"epoch": epoch, **{k: report.get(k) for k in BEST_KEYS}}
    per_group = dict(per_group or {})
    for k in BEST_KEYS:
        v, best = report.get(k), per_group.get(k)
        if v is not None and (best is None or v > best["value"]):
            per_group[k] = {"value": v, "epoch": epoch}
    return selection, per_group


def summarize(preds, confidences, labels, class_counts, head_threshold: float, tail_threshold: float) -> dict:
    """The report of one evaluation (percent): top1 is the balanced accuracy."""
    num_classes = len(class_counts)
    acc = per_class_accuracy(preds, labels, num_classes)
    masks = group_masks(class_counts, head_threshold, tail_threshold)
    report = {"top1": _mean_or_none(acc),
              "accuracy": float(100.0 * np.mean(np.asarray(preds) == np.asarray(labels))),
              **{g: _mean_or_none(acc[m]) for g, m in masks.items()},
              "ece": expected_calibration_error(confidences, np.asarray(preds) == np.asarray(labels)),
              "group_sizes": {g: int(m.sum()) for g, m in masks.items()},
              "per_class_acc": [None if np.isnan(a) else float(a) for a in acc],
              "num_test": int(len(labels))}
    return report
