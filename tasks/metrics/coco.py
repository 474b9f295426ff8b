"""COCO box metrics through faster-coco-eval (default) or pycocotools (the reference), same numbers.

Inputs are plain COCO structures: the ground-truth dict (``images``, ``annotations``,
``categories``) and a results list of ``{image_id, category_id, bbox [x, y, w, h], score}``.
Undefined values (no ground truth of that size, say) are ``None`` rather than COCO's -1.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
Backend = Literal["faster-coco-eval", "pycocotools"]
BACKENDS: tuple[str, ...] = ("faster-coco-eval", "pycocotools")


def coco_box_metrics(
    ground_truth: dict[str, Any], predictions: Sequence[dict[str, Any]], *, backend: Backend = "faster-coco-eval"
) -> dict[str, Any]:
    """The twelve COCO summary numbers and per-class AP (keyed by category name)."""
    names = {c["id"]: c["name"] for c in ground_truth.get("categories", [])}
    if not predictions:
        return _empty(ground_truth, names)
    evaluator = _evaluated(ground_truth, predictions, backend)
    stats = [float(v) for v in evaluator.stats[: len(COCO_KEYS)]]
    metrics: dict[str, Any] = {key: (value if value >= 0 else None) for key, value in zip(COCO_KEYS, stats)}
    precision = np.asarray(evaluator.eval["precision"])  # (iou T, recall R, class K, area A, max-dets M)
    for key, iou in (("per_class_AP", slice(None)), ("per_class_AP50", slice(0, 1))):
        per_class = {}
        for k, category_id in enumerate(evaluator.params.catIds):
            values = precision[iou, :, k, 0, -1]
            values = values[values > -1]
            per_class[names.get(category_id, str(category_id))] = float(values.mean()) if values.size else None
        metrics[key] = per_class
    return metrics


def coco_pr_curves(
    ground_truth: dict[str, Any], predictions: Sequence[dict[str, Any]], *, backend: Backend = "faster-coco-eval"
) -> dict[str, Any]:
    """The COCO evaluator's precision-recall curves at IoU 0.5 (all areas, 100 detections per image): the 101
    recall points, and per class name the interpolated precision and the score reached at each point (None
    where the class has no ground truth or the recall is not reached). Their mean is the class's AP50."""
    names = {c["id"]: c["name"] for c in ground_truth.get("categories", [])}
    recall = np.linspace(0.0, 1.0, 101)
    if not predictions:
        return {"recall": recall.tolist(), "precision": {}, "scores": {}}
    evaluator = _evaluated(ground_truth, predictions, backend)
    precision = np.asarray(evaluator.eval["precision"])[0, :, :, 0, -1]  # (R, K)
    scores = np.asarray(evaluator.eval["scores"])[0, :, :, 0, -1]
    out: dict[str, Any] = {"recall": recall.tolist(), "precision": {}, "scores": {}}
    for k, category_id in enumerate(evaluator.params.catIds):
        name = names.get(category_id, str(category_id))
        out["precision"][name] = [float(v) if v > -1 else None for v in precision[:, k]]
        out["scores"][name] = [float(v) if p > -1 else None for v, p in zip(scores[:, k], precision[:, k])]
    return out


def _evaluated(ground_truth: dict[str, Any], predictions: Sequence[dict[str, Any]], backend: str) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print progress
        evaluator = _evaluator(ground_truth, list(predictions), backend)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _evaluator(ground_truth: dict[str, Any], predictions: list[dict[str, Any]], backend: str) -> Any:
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        return COCOeval(gt, gt.loadRes(copy.deepcopy(predictions)), "bbox")
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        gt = FastCOCO(copy.deepcopy(ground_truth))
        quiet = lambda *args, **kwargs: None  # noqa: E731
        return COCOeval_faster(gt, gt.loadRes(copy.deepcopy(predictions)), "bbox", print_function=quiet)
    raise ValueError(f"coco backend {backend!r} is invalid: choose one of {list(BACKENDS)}")


def _empty(ground_truth: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    """No detections at all: every defined number is 0 (what both libraries give for a miss)."""
    metrics: dict[str, Any] = {key: 0.0 for key in COCO_KEYS}
    per_class = {
        name: (0.0 if any(a["category_id"] == cid for a in ground_truth.get("annotations", [])) else None)
        for cid, name in names.items()
    }
    metrics["per_class_AP"], metrics["per_class_AP50"] = per_class, dict(per_class)
    return metrics
