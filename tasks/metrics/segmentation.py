"""IoU, Dice and accuracies from one confusion matrix accumulated over a whole split.

This is the dataset-level reduction that Pascal VOC, Cityscapes and mmsegmentation report:
every pixel of the split (void excluded) goes into one (true, predicted) confusion matrix,
and each class's IoU is TP / (TP + FP + FN) summed over all images. It is not the mean of
per-image IoUs: that one weights a small image as much as a large one and is undefined for
a class an image does not show. A class with no pixels in the ground truth and none predicted
has no IoU (``None``), and the means skip it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks import distributed

IGNORE_INDEX = 255


class SegmentationMeter:
    """Accumulates the pixel confusion matrix over batches, across processes."""

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """``predicted`` and ``target``: class indices of the same shape; void target pixels are skipped."""
        predicted, target = predicted.detach().cpu().flatten(), target.detach().cpu().flatten()
        keep = target != self.ignore_index
        flat = target[keep] * self.num_classes + predicted[keep]
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def compute(self, class_names: Sequence[str], *, across_processes: bool = True) -> dict[str, Any]:
        """The metrics over every process's pixels (``across_processes``), else over this process's alone."""
        confusion = self.confusion.clone()
        if across_processes:
            confusion = distributed.all_reduce_sum(confusion)
        return segmentation_metrics(confusion.numpy(), class_names)


def segmentation_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Every metrics.json key from a (true, predicted) pixel confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion).astype(float)
    truth = confusion.sum(axis=1).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    union = truth + predicted - tp
    iou = _ratio(tp, union)
    dice = _ratio(2 * tp, truth + predicted)
    accuracy = _ratio(tp, truth)
    total = confusion.sum()
    return {
        "mIoU": _mean(iou),
        "per_class_iou": _per_class(iou, class_names),
        "mDice": _mean(dice),
        "per_class_dice": _per_class(dice, class_names),
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "mean_class_accuracy": _mean(accuracy),
        "per_class_accuracy": _per_class(accuracy, class_names),
        "confusion_matrix": confusion.tolist(),
        "num_pixels": int(total),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (the class is absent on both sides)."""
    out = np.full_like(numerator, np.nan, dtype=float)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def _per_class(values: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    return {str(name): (None if np.isnan(v) else float(v)) for name, v in zip(class_names, values)}
