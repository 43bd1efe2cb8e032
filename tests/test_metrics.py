"""Metrics against values computed by hand."""
import warnings

import numpy as np
import pytest

from engine.metrics import best_on_test, expected_calibration_error, group_masks, per_class_accuracy, summarize


def test_per_class_and_groups_by_hand():
    # 4 classes, 2 test samples each; class 3 gets 1/2 right, class 2 none, class 0 and 1 all.
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    preds = np.array([0, 0, 1, 1, 0, 1, 3, 0])
    conf = np.full(8, 0.5)
    counts = [500, 120, 60, 10]  # head > 100: classes 0, 1; tail < 20: class 3; medium: class 2
    r = summarize(preds, conf, labels, counts, head_threshold=100, tail_threshold=20)
    assert r["per_class_acc"] == [100.0, 100.0, 0.0, 50.0]
    assert r["top1"] == pytest.approx(62.5)          # (100 + 100 + 0 + 50) / 4
    assert r["accuracy"] == pytest.approx(62.5)      # 5 / 8 correct
    assert r["head"] == 100.0 and r["medium"] == 0.0 and r["tail"] == 50.0
    assert r["group_sizes"] == {"head": 2, "medium": 1, "tail": 1}
    assert r["ece"] == pytest.approx(100 * abs(5 / 8 - 0.5))  # one bin


def test_balanced_differs_from_plain_accuracy_on_unbalanced_test():
    labels = np.array([0, 0, 0, 1])
    preds = np.array([0, 0, 0, 0])
    r = summarize(preds, np.ones(4), labels, [10, 10], 5, 1)
    assert r["accuracy"] == 75.0 and r["top1"] == 50.0


def test_group_boundaries_are_inclusive_for_medium():
    masks = group_masks([1001, 1000, 200, 199], head_threshold=1000, tail_threshold=200)
    assert masks["head"].tolist() == [True, False, False, False]
    assert masks["medium"].tolist() == [False, True, True, False]
    assert masks["tail"].tolist() == [False, False, False, True]


def test_empty_group_and_missing_class():
    r = summarize(np.array([0, 1]), np.ones(2), np.array([0, 1]), [50, 50, 50], 100, 20)
    assert r["head"] is None and r["tail"] is None and r["medium"] == 100.0
    assert r["per_class_acc"][2] is None
    assert np.isnan(per_class_accuracy(np.array([0]), np.array([0]), 2)[1])


def test_ece_by_hand_two_bins():
    # 15 bins of width 1/15: 0.95 -> bin 14, 0.3 -> bin 4 (0.2667, 0.3333].
    conf = np.array([0.95, 0.95, 0.3, 0.3])
    correct = np.array([1, 0, 1, 1])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.3)
    assert expected_calibration_error(conf, correct) == pytest.approx(100 * expected)
    # Upper edges belong to their bin: confidence exactly 1/15 is in bin 0, 1.0 in bin 14.
    assert expected_calibration_error(np.array([1 / 15, 1.0]), np.array([0, 1])) == pytest.approx(100 * 0.5 / 15)


def test_ece_of_non_finite_confidences_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the cast of NaN to a bin index warned
        assert np.isnan(expected_calibration_error(np.array([0.5, np.nan]), np.array([1, 0])))


def test_best_on_test_is_the_first_epoch_with_the_best_top1_and_each_groups_own_best():
    """Four evaluations by hand: top-1 70, 74, 74 (a tie keeps the first: the official code's
    `acc1 > best_acc1`), 72; Head peaks at epoch 0, Tail at epoch 3, Medium has no classes."""
    reports = [dict(top1=70.0, head=90.0, medium=None, tail=40.0), dict(top1=74.0, head=85.0, medium=None, tail=50.0),
               dict(top1=74.0, head=88.0, medium=None, tail=52.0), dict(top1=72.0, head=80.0, medium=None, tail=55.0)]
    selection, per_group = None, None
    for epoch, report in enumerate(reports):
        selection, per_group = best_on_test(selection, per_group, report, epoch)
    assert selection == {"epoch": 1, "top1": 74.0, "head": 85.0, "medium": None, "tail": 50.0}
    assert per_group == {"top1": {"value": 74.0, "epoch": 1}, "head": {"value": 90.0, "epoch": 0},
                         "tail": {"value": 55.0, "epoch": 3}}
