"""KITTI's 2D object detection AP, as its devkit (``devkit_object/cpp/evaluate_object.cpp``) computes it.

The benchmark scores Car, Pedestrian and Cyclist at three levels, each a bound on the ground truth it counts:

========  ==========  ===============  ================
level     min height  max occlusion    max truncation
========  ==========  ===============  ================
easy      40 px       0 (fully seen)   0.15
moderate  25 px       1 (partly)       0.30
hard      25 px       2 (mostly hid)   0.50
========  ==========  ===============  ================

A ground truth outside the level, and a Van for Car or a Person_sitting for Pedestrian (the neighbouring classes),
is ignored: a detection matched to it is neither a hit nor a false positive. A detection lower than the level's
height is ignored too, and so is an unmatched one that lies inside a DontCare region (its intersection over its own
area above the class's overlap). A detection is a hit at IoU above 0.7 for Car and 0.5 for the others (the devkit's
own IoU: continuous corners, no +1). A ground truth counts when its height is above the level's, a detection when
its height is not below it.

The AP follows the devkit: score thresholds chosen at 41 recall steps from the hits, precision made monotone, then
``AP40`` the mean of points 1 to 40 (the benchmark's metric since 2019) and ``AP11`` the mean of points 0, 4, .., 40
(the older one). Point i holds the precision at the threshold of recall step i + 1, so 40 objects found without a
false positive score AP40 39/40, as in the devkit. Figures are fractions, where the devkit prints percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.data.kitti import DONT_CARE, KittiTruth

CLASSES = ("Car", "Pedestrian", "Cyclist")
NEIGHBOURS = {"Car": "Van", "Pedestrian": "Person_sitting"}  # ignored, neither hit nor miss, for that class
MIN_OVERLAP = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
LEVELS = ("easy", "moderate", "hard")
MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
POINTS = 41


def overlaps(boxes: np.ndarray, others: np.ndarray, *, own_area: bool = False) -> np.ndarray:
    """(N, M): IoU of each of ``boxes`` with each of ``others``, or (``own_area``) their intersection over the
    area of the box of ``boxes``, the devkit's ``imageBoxOverlap`` with criterion -1 or 0."""
    a = np.asarray(boxes, np.float64).reshape(-1, 1, 4)
    b = np.asarray(others, np.float64).reshape(1, -1, 4)
    width = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((width > 0) & (height > 0), width * height, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    if own_area:
        union = np.broadcast_to(area_a, inter.shape)
    else:
        union = area_a + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


@dataclass
class _Image:
    """One image's ground truth and detections for one class and level, with each ground truth's candidate
    detections (index, overlap) in detection order."""

    ignored_gt: list[int]  # 0 counted, 1 ignored, -1 not this class
    ignored_det: np.ndarray  # 0 counted, 1 ignored (too low), -1 not this class
    scores: np.ndarray
    candidates: list[list[tuple[int, float]]]
    in_dont_care: np.ndarray  # (D,) bool: inside a DontCare region by more than the class's overlap
    order: np.ndarray  # the detections that can count (ignored_det != -1), by falling score


def _prepare(
    truth: KittiTruth,
    detections: Mapping[str, np.ndarray],
    name: str,
    level: int,
    cross: np.ndarray,
    in_regions: np.ndarray,
) -> tuple[_Image, int]:
    """The devkit's ``cleanData`` for one image: which ground truths and detections count, are ignored or are not
    of class ``name`` at ``level``; ``cross`` is the detections' IoU with the ground truth, ``in_regions`` the share
    of each detection inside each DontCare region. Also the number of ground truths that count."""
    types = np.asarray(truth.types, dtype=object)
    heights = truth.boxes[:, 3] - truth.boxes[:, 1]
    outside = (
        (truth.occluded > MAX_OCCLUSION[level])
        | (truth.truncated > MAX_TRUNCATION[level])
        | (heights <= MIN_HEIGHT[level])
    )
    own = types == name
    neighbour = types == NEIGHBOURS.get(name, "")
    ignored_gt = np.where(own & ~outside, 0, np.where(neighbour | (own & outside), 1, -1))
    det_boxes = detections["boxes"]
    low = np.abs(det_boxes[:, 3] - det_boxes[:, 1]) < MIN_HEIGHT[level]  # its int32_t height: the same test
    ignored_det = np.where(low, 1, np.where(detections["names"] == name, 0, -1))
    scores = detections["scores"]
    limit = MIN_OVERLAP[name]
    candidates = []
    for i in range(len(types)):
        if ignored_gt[i] == -1:
            candidates.append([])
            continue
        column = cross[:, i]
        hits = np.flatnonzero((column > limit) & (ignored_det != -1))
        candidates.append([(int(j), float(column[j])) for j in hits])
    in_dont_care = (in_regions > limit).any(axis=1)
    relevant = np.flatnonzero(ignored_det != -1)
    order = relevant[np.argsort(-scores[relevant], kind="stable")]
    image = _Image(ignored_gt.tolist(), ignored_det, scores, candidates, in_dont_care, order)
    return image, int((ignored_gt == 0).sum())


def _statistics(image: _Image, threshold: float | None) -> tuple[int, int, int, list[float]]:
    """The devkit's ``computeStatistics``: (tp, fp, fn, the hits' scores). With no ``threshold`` each ground
    truth takes the highest-scoring detection above the overlap (to choose the thresholds); with one, the
    detections scoring below it are left out, a ground truth takes the counted detection of largest overlap,
    else the first ignored one, and false positives are counted."""
    ignored_det, scores = image.ignored_det, image.scores
    assigned: set[int] = set()
    tp = fn = 0
    hit_scores: list[float] = []
    for flag, candidates in zip(image.ignored_gt, image.candidates):
        if flag == -1:
            continue
        chosen, best, took_ignored = -1, 0.0, False
        for j, overlap in candidates:
            if j in assigned:
                continue
            if threshold is None:
                if chosen == -1 or scores[j] > scores[chosen]:
                    chosen = j
            elif scores[j] < threshold:
                continue
            elif ignored_det[j] == 0 and (overlap > best or took_ignored):
                chosen, best, took_ignored = j, overlap, False
            elif ignored_det[j] == 1 and chosen == -1:
                chosen, took_ignored = j, True
        if chosen == -1:
            fn += flag == 0
            continue
        assigned.add(chosen)
        if flag == 0 and ignored_det[chosen] == 0:
            tp += 1
            hit_scores.append(float(scores[chosen]))
    fp = 0
    if threshold is not None:
        for j in image.order:
            if scores[j] < threshold:
                break
            if ignored_det[j] == 0 and j not in assigned and not image.in_dont_care[j]:
                fp += 1
    return tp, fp, fn, hit_scores


def _thresholds(hit_scores: Sequence[float], counted: int) -> list[float]:
    """The devkit's ``getThresholds``: from the hits' scores, falling, the one nearest each of the 41 recall
    steps."""
    ordered = sorted(hit_scores, reverse=True)
    chosen, recall = [], 0.0
    for i, value in enumerate(ordered):
        left = (i + 1) / counted
        right = (i + 2) / counted if i < len(ordered) - 1 else left
        if right - recall < recall - left and i < len(ordered) - 1:
            continue
        chosen.append(value)
        recall += 1.0 / (POINTS - 1.0)
    return chosen


def _precision(images: Sequence[_Image], counted: int) -> np.ndarray | None:
    """The 41-point interpolated precision of one class at one level, or None with no ground truth to count."""
    if counted == 0:
        return None
    hits = [score for image in images for score in _statistics(image, None)[3]]
    thresholds = _thresholds(hits, counted)
    totals = np.zeros((len(thresholds), 3))
    for image in images:
        seen: dict[int, tuple[int, int, int]] = {}  # by the number of detections at or above the threshold
        above = np.searchsorted(-image.scores[image.order], -np.asarray(thresholds), side="right")
        for t, (threshold, key) in enumerate(zip(thresholds, above.tolist())):
            if key not in seen:
                seen[key] = _statistics(image, threshold)[:3]
            totals[t] += seen[key]
    precision = np.zeros(POINTS)
    claimed = totals[:, 0] + totals[:, 1]
    precision[: len(thresholds)] = np.divide(totals[:, 0], claimed, out=np.zeros(len(thresholds)), where=claimed > 0)
    return np.maximum.accumulate(precision[::-1])[::-1]


def kitti_box_metrics(truths: Mapping[Any, KittiTruth], detections: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """``truths[image]`` (:class:`KittiTruth`); ``detections[image] = {names, boxes (x1 y1 x2 y2), scores}``,
    every image of ``truths`` present. Returns ``AP40`` and ``AP11`` as ``{class: {level: AP}}`` (None for a class
    with nothing to count at that level) and ``mAP40_moderate``, the mean over the classes of their moderate AP40
    (the benchmark ranks by each class's moderate AP)."""
    prepared: dict[tuple[str, int], tuple[list[_Image], int]] = {}
    for key, truth in truths.items():
        found = detections[key]
        dets = {
            "names": np.asarray(found["names"], dtype=object).reshape(-1),
            "boxes": np.asarray(found["boxes"], np.float64).reshape(-1, 4),
            "scores": np.asarray(found["scores"], np.float64).reshape(-1),
        }
        cross = overlaps(dets["boxes"], truth.boxes)  # one image's overlaps, the same for every class and level
        regions = truth.boxes[np.asarray(truth.types, dtype=object) == DONT_CARE]
        in_regions = overlaps(dets["boxes"], regions, own_area=True)
        for name in CLASSES:
            for level in range(len(LEVELS)):
                image, counted = _prepare(truth, dets, name, level, cross, in_regions)
                images, total = prepared.get((name, level), ([], 0))
                images.append(image)
                prepared[name, level] = (images, total + counted)
    ap40: dict[str, dict[str, float | None]] = {name: {} for name in CLASSES}
    ap11: dict[str, dict[str, float | None]] = {name: {} for name in CLASSES}
    for name in CLASSES:
        for level, level_name in enumerate(LEVELS):
            images, counted = prepared.get((name, level), ([], 0))
            precision = _precision(images, counted)
            ap40[name][level_name] = None if precision is None else float(precision[1:].sum() / (POINTS - 1))
            ap11[name][level_name] = None if precision is None else float(precision[::4].sum() / 11)
    moderate = [values["moderate"] for values in ap40.values() if values["moderate"] is not None]
    return {
        "AP40": ap40,
        "AP11": ap11,
        "mAP40_moderate": float(np.mean(moderate)) if moderate else None,
    }
