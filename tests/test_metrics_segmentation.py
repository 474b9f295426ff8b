"""Segmentation metrics against a hand-computed confusion matrix and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, recall_score

from tasks.metrics.segmentation import SegmentationMeter, segmentation_metrics

NAMES = ["background", "a", "b", "unused"]


def test_hand_computed_case() -> None:
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    predicted = torch.tensor([[0, 1, 1], [1, 2, 0]])
    meter = SegmentationMeter(4)
    meter.update(predicted, target)
    m = meter.compute(NAMES)
    # confusion (true rows, predicted columns), void pixel left out:
    #   t0: p0 1, p1 1;  t1: p1 2;  t2: p2 1
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class_iou"] == pytest.approx({"background": 1 / 2, "a": 2 / 3, "b": 1.0, "unused": None})
    assert m["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)  # the absent class is skipped, not counted as 0
    assert m["per_class_dice"] == pytest.approx({"background": 2 / 3, "a": 4 / 5, "b": 1.0, "unused": None})
    assert m["mDice"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 5)
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert m["num_pixels"] == 5


def test_one_matrix_over_the_split_is_not_a_mean_of_images() -> None:
    meter = SegmentationMeter(2)
    meter.update(torch.ones(1, 10, 10, dtype=torch.long), torch.ones(1, 10, 10, dtype=torch.long))  # big, perfect
    small_target = torch.tensor([[[1, 0]]])
    meter.update(torch.tensor([[[0, 0]]]), small_target)  # tiny, misses its class-1 pixel
    m = meter.compute(["bg", "fg"])
    assert m["per_class_iou"]["fg"] == pytest.approx(100 / 101)  # pooled pixels, not (1.0 + 0.0) / 2


def test_against_scikit_learn_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (3, 40, 30))
    target[rng.random(target.shape) < 0.1] = 255
    predicted = np.where(rng.random(target.shape) < 0.6, target % 5, rng.integers(0, 5, target.shape))
    meter = SegmentationMeter(5)
    for t, p in zip(target, predicted):  # accumulated image by image
        meter.update(torch.from_numpy(p), torch.from_numpy(t))
    m = meter.compute([str(i) for i in range(5)])
    keep = target.ravel() != 255
    y_true, y_pred = target.ravel()[keep], predicted.ravel()[keep]
    labels = list(range(5))
    assert np.array_equal(m["confusion_matrix"], confusion_matrix(y_true, y_pred, labels=labels))
    assert list(m["per_class_iou"].values()) == pytest.approx(
        jaccard_score(y_true, y_pred, labels=labels, average=None)
    )
    assert list(m["per_class_dice"].values()) == pytest.approx(f1_score(y_true, y_pred, labels=labels, average=None))
    assert m["mIoU"] == pytest.approx(jaccard_score(y_true, y_pred, labels=labels, average="macro"))
    assert m["mean_class_accuracy"] == pytest.approx(recall_score(y_true, y_pred, labels=labels, average="macro"))
    assert m["pixel_accuracy"] == pytest.approx(float((y_true == y_pred).mean()))


def test_empty_split_has_no_scores() -> None:
    m = segmentation_metrics(np.zeros((3, 3), np.int64), ["a", "b", "c"])
    assert m["mIoU"] is None and m["pixel_accuracy"] is None and m["num_pixels"] == 0
