"""Pascal VOC detection AP, as the official devkit computes it.

Boxes come in as continuous pixel corners ``[x1, y1, x2, y2]`` (the library's convention,
torchvision's and COCO's) and are turned into VOC's 1-based inclusive pixels
(``xmin = x1 + 1``, ``xmax = x2``) before the devkit's IoU, whose widths are
``xmax - xmin + 1``. Difficult ground truth is neither a hit nor a miss: matching it is
ignored and it does not count toward recall. ``mAP07`` is VOC2007's 11-point
interpolation; ``mAP`` the area under the monotone precision/recall curve (VOC2010+).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def voc_box_metrics(
    ground_truth: Mapping[Any, Mapping[str, Any]],
    detections: Mapping[Any, Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """``ground_truth[image] = {boxes (N, 4), labels (N,), difficult (N,)}``;
    ``detections[image] = {boxes, labels, scores}``; labels index ``class_names``.

    Returns ``mAP07``, ``mAP`` and ``per_class_AP07`` / ``per_class_AP`` (None for a class
    with no non-difficult ground truth, which the means leave out).
    """
    per_07: dict[str, float | None] = {}
    per_area: dict[str, float | None] = {}
    for label, name in enumerate(class_names):
        recall, precision = _pr_curve(ground_truth, detections, label, iou_threshold)
        if recall is None:
            per_07[name] = per_area[name] = None
            continue
        per_07[name] = _ap_11_point(recall, precision)
        per_area[name] = _ap_area(recall, precision)
    defined_07 = [v for v in per_07.values() if v is not None]
    defined_area = [v for v in per_area.values() if v is not None]
    return {
        "mAP07": float(np.mean(defined_07)) if defined_07 else 0.0,
        "mAP": float(np.mean(defined_area)) if defined_area else 0.0,
        "per_class_AP07": per_07,
        "per_class_AP": per_area,
    }


def to_voc_pixels(boxes: np.ndarray) -> np.ndarray:
    """Continuous corners to VOC's 1-based inclusive pixel boxes."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, :2] += 1.0
    return out


def _pr_curve(
    ground_truth: Mapping[Any, Mapping[str, Any]],
    detections: Mapping[Any, Mapping[str, Any]],
    label: int,
    iou_threshold: float,
) -> tuple[np.ndarray | None, np.ndarray]:
    gt_boxes, gt_difficult, matched = {}, {}, {}
    positives = 0
    for image, target in ground_truth.items():
        keep = np.asarray(target["labels"]).reshape(-1) == label
        gt_boxes[image] = to_voc_pixels(target["boxes"])[keep]
        difficult = np.asarray(target.get("difficult", np.zeros(len(keep), bool)), dtype=bool).reshape(-1)[keep]
        gt_difficult[image] = difficult
        matched[image] = np.zeros(len(difficult), dtype=bool)
        positives += int((~difficult).sum())
    if positives == 0:
        return None, np.zeros(0)
    images, scores, boxes = [], [], []
    for image, det in detections.items():
        keep = np.asarray(det["labels"]).reshape(-1) == label
        count = int(keep.sum())
        images += [image] * count
        scores.append(np.asarray(det["scores"], dtype=np.float64).reshape(-1)[keep])
        boxes.append(to_voc_pixels(det["boxes"])[keep])
    if not images:
        return np.zeros(1), np.zeros(1)
    order = np.argsort(-np.concatenate(scores), kind="stable")
    all_boxes = np.concatenate(boxes)[order]
    ordered_images = [images[i] for i in order]
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, (image, box) in enumerate(zip(ordered_images, all_boxes)):
        candidates = gt_boxes.get(image, np.zeros((0, 4)))
        if len(candidates) == 0:
            fp[d] = 1
            continue
        overlaps = _voc_iou(box, candidates)
        best = int(overlaps.argmax())
        if overlaps[best] > iou_threshold:
            if gt_difficult[image][best]:
                continue  # neither a hit nor a miss
            if matched[image][best]:
                fp[d] = 1  # a duplicate
            else:
                matched[image][best] = True
                tp[d] = 1
        else:
            fp[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def _voc_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    iw = np.maximum(np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (others[:, 2] - others[:, 0] + 1.0) * (others[:, 3] - others[:, 1] + 1.0)
    return inter / (area + areas - inter)


def _ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    total = 0.0
    for threshold in np.arange(0.0, 1.1, 0.1):
        above = precision[recall >= threshold]
        total += (float(above.max()) if above.size else 0.0) / 11.0
    return total


def _ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope, monotone from the right
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
