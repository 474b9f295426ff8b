"""BDD100K's lane-marking F-scores, as its toolkit's ``bdd100k/eval/lane.py`` computes them for the category
sub-task.

For each image and each lane category, a predicted pixel counts as right where a true pixel of that category lies
within ``b`` pixels of it (the true mask dilated by a disk of radius ``b``: the points with x² + y² ≤ b²), and a
true pixel counts as found where a predicted one lies as near. Precision and recall are those shares and F their
harmonic mean, at ``b`` = 1, 2 and 5 pixels. A category that an image neither shows nor predicts scores 1; one
predicted where there is none scores precision 0 and recall 1 (F 0), and the reverse the same. Each category's
score is the mean over the images, and the summary the mean over the categories. The toolkit prints them ×100.

The toolkit scores two more sub-tasks from the masks' other bits, the direction and the style, and averages all
three; the models here predict the category alone, so only its sub-task is scored. Void pixels of the ground truth
(the padding of a batch) are left out of both masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from tasks import distributed
from tasks.data.public_sets import are_bdd_lanes

BOUND_PIXELS = (1, 2, 5)


def _disk(radius: int) -> np.ndarray:
    """The points within ``radius`` of the centre (x² + y² ≤ radius²), as scikit-image's ``disk``."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


_DISKS = {radius: _disk(radius) for radius in BOUND_PIXELS}


def lane_f_scores(
    truth: np.ndarray, predicted: np.ndarray, categories: Sequence[int], bounds: Sequence[int] = BOUND_PIXELS
) -> np.ndarray:
    """One image's F-scores, (len(categories), len(bounds)): ``truth`` and ``predicted`` are (H, W) class maps,
    ``categories`` the classes scored. Only the region around a category's pixels is dilated: nothing outside it
    can move a count."""
    scores = np.ones((len(categories), len(bounds)))
    for row, category in enumerate(categories):
        true, found = truth == category, predicted == category
        n_true, n_found = int(true.sum()), int(found.sum())
        if n_true == 0 or n_found == 0:  # the toolkit's cases: (precision, recall) = (1, 0), (0, 1) or (1, 1)
            scores[row] = 1.0 if n_true == n_found else 0.0
            continue
        x, y, w, h = cv2.boundingRect((true | found).astype(np.uint8))
        true_u8 = true[y : y + h, x : x + w].astype(np.uint8)
        found_u8 = found[y : y + h, x : x + w].astype(np.uint8)
        for column, radius in enumerate(bounds):
            kernel = _DISKS.get(radius)
            kernel = _disk(radius) if kernel is None else kernel
            precision = np.count_nonzero(found_u8 & cv2.dilate(true_u8, kernel)) / n_found
            recall = np.count_nonzero(true_u8 & cv2.dilate(found_u8, kernel)) / n_true
            total = precision + recall
            scores[row, column] = 2.0 * precision * recall / total if total else 0.0
    return scores


def lane_meter(class_names: Sequence[str], *, ignore_index: int) -> LaneMeter | None:
    """A :class:`LaneMeter` where ``class_names`` are BDD100K's lane markings
    (:func:`tasks.data.public_sets.are_bdd_lanes`), else None: the runners score lane F-scores for those alone."""
    return LaneMeter(class_names, ignore_index=ignore_index) if are_bdd_lanes(class_names) else None


class LaneMeter:
    """The mean over images of :func:`lane_f_scores`, over batches and across processes. ``class_names``: the
    background first, then the lane categories in the toolkit's order (``tasks.data.public_sets.BDD_LANES``)."""

    def __init__(self, class_names: Sequence[str], *, ignore_index: int, bounds: Sequence[int] = BOUND_PIXELS) -> None:
        self.names = list(class_names[1:])
        self.categories = list(range(1, len(class_names)))
        self.ignore_index = ignore_index
        self.bounds = tuple(bounds)
        self.sums = np.zeros((len(self.categories), len(self.bounds)))
        self.images = 0

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """``predicted`` and ``target``: class maps, one image's (H, W) or a batch's (N, H, W)."""
        predicted, target = predicted.detach().cpu(), target.detach().cpu()
        if target.dim() == 2:
            predicted, target = predicted[None], target[None]
        for found, truth in zip(predicted.numpy(), target.numpy()):
            void = truth == self.ignore_index
            if void.any():  # out of both masks: the void value is no category, in either dtype (uint8 or int64)
                found = np.where(void, self.ignore_index, found)
            self.sums += lane_f_scores(truth, found, self.categories, self.bounds)
            self.images += 1

    def compute(self, *, across_processes: bool = True) -> dict[str, Any]:
        """The means, over every process's images (``across_processes``), else over this process's alone."""
        totals = torch.from_numpy(np.append(self.sums.ravel(), self.images))
        if across_processes:
            totals = distributed.all_reduce_sum(totals)
        images = int(totals[-1].item())
        means = totals[:-1].numpy().reshape(self.sums.shape) / max(images, 1)
        keys = [f"F1_pix{bound}" for bound in self.bounds]
        result: dict[str, Any] = {
            key: (float(means[:, column].mean()) if images else None) for column, key in enumerate(keys)
        }
        result["per_class"] = {
            name: {key: (float(means[row, column]) if images else None) for column, key in enumerate(keys)}
            for row, name in enumerate(self.names)
        }
        result["images"] = images
        return result
