"""Score COCO-style results against a detection split with both protocols, whatever format it came in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tasks.data.detection import DetectionData, DetectionSample
from tasks.errors import UserError
from tasks.metrics.coco import Backend, coco_box_metrics
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


def score(data: DetectionData, results: Sequence[dict[str, Any]], *, backend: Backend) -> dict[str, Any]:
    """metrics.json's ``coco`` and ``voc`` sections for ``results`` on ``data``."""
    coco_ids = data.coco_image_ids()
    labels = resolve_labels(data, results)
    coco_results = [
        {**r, "image_id": coco_ids[r["image_id"]], "category_id": data.category_ids[label - 1]}
        for r, label in zip(results, labels)
    ]
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
    return {
        "coco": coco_box_metrics(data.coco_ground_truth(), coco_results, backend=backend),
        "voc": voc_box_metrics(ground_truth, detections, data.class_names),
        "num_images": len(data.samples),
        "num_detections": len(results),
    }


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
