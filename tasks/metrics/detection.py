"""Score COCO-style results against a detection split with both protocols, whatever format it came in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from tasks.data.detection import DetectionData, DetectionSample
from tasks.errors import UserError
from tasks.metrics.coco import Backend, coco_box_metrics, coco_pr_curves
from tasks.metrics.kitti import kitti_box_metrics
from tasks.metrics.voc import voc_box_metrics


def to_results(sample: DetectionSample, output: dict[str, torch.Tensor], data: DetectionData) -> list[dict[str, Any]]:
    """One image's detections as COCO results with the dataset's own image and category ids."""
    boxes = output["boxes"].detach().float().cpu().numpy()
    labels = output["labels"].cpu().numpy()
    scores = output["scores"].detach().float().cpu().numpy()
    results = []
    for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
        results.append(
            {
                "image_id": sample.image_id,
                "category_id": data.category_ids[int(label) - 1],
                "category_name": data.class_names[int(label) - 1],
                "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
                "score": round(float(score), 5),
            }
        )
    return results


def _coco_results(
    data: DetectionData, results: Sequence[dict[str, Any]], labels: Sequence[int]
) -> list[dict[str, Any]]:
    """``results`` with the COCO ground truth's image ids and category ids."""
    coco_ids = data.coco_image_ids()
    return [
        {**r, "image_id": coco_ids[r["image_id"]], "category_id": data.category_ids[label - 1]}
        for r, label in zip(results, labels)
    ]


def pr_curves(data: DetectionData, results: Sequence[dict[str, Any]], *, backend: Backend) -> dict[str, Any]:
    """The COCO evaluator's precision-recall curves at IoU 0.5 for ``results`` on ``data`` (see
    :func:`tasks.metrics.coco.coco_pr_curves`)."""
    coco_results = _coco_results(data, results, resolve_labels(data, results))
    return coco_pr_curves(data.coco_ground_truth(), coco_results, backend=backend)


def score(data: DetectionData, results: Sequence[dict[str, Any]], *, backend: Backend) -> dict[str, Any]:
    """metrics.json's ``coco`` and ``voc`` sections for ``results`` on ``data``, and ``kitti`` (easy, moderate and
    hard AP, :func:`tasks.metrics.kitti.kitti_box_metrics`) where ``data`` was read from KITTI's label files."""
    labels = resolve_labels(data, results)
    coco_results = _coco_results(data, results, labels)
    ground_truth, detections = {}, {}
    for sample in data.samples:
        ground_truth[sample.image_id] = {
            "boxes": sample.boxes,
            "labels": sample.labels - 1,
            "difficult": sample.difficult | sample.crowd,
        }
        detections[sample.image_id] = {"boxes": [], "labels": [], "scores": []}
    for r, label in zip(results, labels):
        x, y, w, h = r["bbox"]
        entry = detections[r["image_id"]]
        entry["boxes"].append([x, y, x + w, y + h])
        entry["labels"].append(label - 1)
        entry["scores"].append(r["score"])
    detections = {k: {key: np.asarray(v) for key, v in d.items()} for k, d in detections.items()}
    metrics = {
        "coco": coco_box_metrics(data.coco_ground_truth(), coco_results, backend=backend),
        "voc": voc_box_metrics(ground_truth, detections, data.class_names),
    }
    truths = {s.image_id: s.kitti for s in data.samples if s.kitti is not None}
    if data.samples and len(truths) == len(data.samples):  # KITTI's label files: its own protocol too
        for found in detections.values():
            found["names"] = np.array([data.class_names[label] for label in found["labels"]], dtype=object)
        metrics["kitti"] = kitti_box_metrics(truths, detections)
    return {**metrics, "num_images": len(data.samples), "num_detections": len(results)}


def resolve_labels(data: DetectionData, results: Sequence[dict[str, Any]]) -> list[int]:
    """Each result's contiguous label: by ``category_name`` when given (the name decides), else by id.
    Unknown images, names or ids are errors."""
    by_name = {name: i + 1 for i, name in enumerate(data.class_names)}
    by_id = {cid: i + 1 for i, cid in enumerate(data.category_ids)}
    images = {s.image_id for s in data.samples}
    labels = []
    for number, r in enumerate(results, start=1):
        if r.get("image_id") not in images:
            raise UserError(f"prediction {number} has image_id {r.get('image_id')!r}, which is not in {data.source}")
        if "category_name" in r:
            if r["category_name"] not in by_name:
                raise UserError(f"prediction {number} has unknown category_name {r['category_name']!r}")
            labels.append(by_name[r["category_name"]])
        elif r.get("category_id") in by_id:
            labels.append(by_id[r["category_id"]])
        else:
            raise UserError(f"prediction {number} has unknown category_id {r.get('category_id')!r}")
    return labels


def f1_by_confidence(curves: dict[str, Any], points: int = 101) -> dict[str, Any]:
    """F1 against the confidence threshold, read off the COCO evaluator's curves at IoU 0.5: keeping the
    detections scored at least ``c`` reaches the highest recall point whose score is at least ``c``, at that point's
    precision. Per class with ground truth, their mean, and the highest confidence with the best mean F1."""
    recall = np.asarray(curves["recall"])
    grid = np.round(np.linspace(0.0, 1.0, points), 10)  # 0.7, not 0.7000000000000001
    per_class = {}
    for name, precision in curves["precision"].items():
        scores = curves["scores"][name]
        # recall points reached have a positive precision; the ones beyond the last detection are 0
        reached = [(r, p, s) for r, p, s in zip(recall, precision, scores) if p and s is not None]
        if all(p is None for p in precision):
            continue  # no ground truth for this class
        f1 = np.zeros(points)
        for i, confidence in enumerate(grid):
            kept = [(r, p) for r, p, s in reached if s >= confidence]
            if kept:
                r, p = max(kept)  # the highest recall still reached
                f1[i] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        per_class[name] = f1.tolist()
    mean = np.mean(list(per_class.values()), axis=0) if per_class else np.zeros(points)
    best = points - 1 - int(np.argmax(mean[::-1]))  # the highest confidence that reaches the best F1
    return {
        "confidence": grid.tolist(),
        "per_class": per_class,
        "mean": mean.tolist(),
        "best_confidence": float(grid[best]),
        "best_f1": float(mean[best]),
    }


def detection_confusion(
    data: DetectionData, results: Sequence[dict[str, Any]], *, confidence: float, iou: float = 0.5
) -> np.ndarray:
    """Ultralytics' detection confusion matrix: (K + 1) x (K + 1) counts, rows true and columns predicted, the last
    row and column the background. Detections scored at least ``confidence`` are matched to ground-truth boxes of
    any class by IoU above ``iou``, the highest overlaps first, each box and detection at most once. A match counts
    at (its box's class, its detection's class); a box left unmatched is a miss (its class, background); a
    detection left unmatched is a false positive (background, its class). Crowd and difficult boxes count
    nothing: a detection on one of them is dropped, as the evaluators ignore it."""
    k = len(data.class_names)
    confusion = np.zeros((k + 1, k + 1), dtype=np.int64)
    labels = resolve_labels(data, results)
    by_image: dict[Any, list[tuple[list[float], int]]] = {}
    for r, label in zip(results, labels):
        if r["score"] >= confidence:
            x, y, w, h = r["bbox"]
            by_image.setdefault(r["image_id"], []).append(([x, y, x + w, y + h], label - 1))
    for sample in data.samples:
        found = by_image.get(sample.image_id, [])
        ignored = sample.crowd | sample.difficult
        truth, truth_labels = sample.boxes[~ignored], sample.labels[~ignored] - 1
        boxes = torch.tensor([b for b, _ in found], dtype=torch.float64).reshape(-1, 4)
        predicted = np.asarray([c for _, c in found], dtype=np.int64)
        if ignored.any() and len(found):  # detections on ignored boxes count nothing
            overlap = box_iou(boxes, torch.as_tensor(sample.boxes[ignored], dtype=torch.float64))
            keep = (overlap <= iou).all(dim=1).numpy()
            boxes, predicted = boxes[torch.from_numpy(keep)], predicted[keep]
        matched_truth, matched_found = set(), set()
        if len(truth) and len(predicted):
            overlap = box_iou(torch.as_tensor(truth, dtype=torch.float64), boxes).numpy()
            pairs = np.argwhere(overlap > iou)
            for t, d in sorted(pairs.tolist(), key=lambda pair: -overlap[pair[0], pair[1]]):
                if t not in matched_truth and d not in matched_found:
                    matched_truth.add(t)
                    matched_found.add(d)
                    confusion[truth_labels[t], predicted[d]] += 1
        for t, label in enumerate(truth_labels):
            if t not in matched_truth:
                confusion[label, k] += 1
        for d, label in enumerate(predicted):
            if d not in matched_found:
                confusion[k, label] += 1
    return confusion
