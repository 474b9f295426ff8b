"""Accuracy, top-5 and precision/recall/F1 (macro, micro, weighted, per class) from one confusion matrix.

The definitions are scikit-learn's with ``labels=range(C)`` and ``zero_division=0``: a class
with no predictions has precision 0, a class with no samples has recall 0, and both still
count in the macro mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks import distributed


class ClassificationMeter:
    """Accumulates a confusion matrix and top-k hits over batches, across processes."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.top5_hits = 0

    def update(self, logits: Tensor, targets: Tensor) -> None:
        logits, targets = logits.detach().float().cpu(), targets.cpu()
        predicted = logits.argmax(dim=1)
        flat = targets * self.num_classes + predicted
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).reshape(self.num_classes, -1)
        k = min(5, self.num_classes)
        self.top5_hits += int((logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum())

    def compute(self, class_names: Sequence[str]) -> dict[str, Any]:
        state = torch.cat([self.confusion.flatten(), torch.tensor([self.top5_hits])])
        state = distributed.all_reduce_sum(state)
        confusion = state[:-1].reshape(self.num_classes, self.num_classes).numpy()
        top5 = int(state[-1]) if self.num_classes > 5 else None
        return metrics_from_confusion(confusion, class_names, top5_hits=top5)


def metrics_from_confusion(
    confusion: np.ndarray, class_names: Sequence[str], *, top5_hits: int | None = None
) -> dict[str, Any]:
    """Every metrics.json key from a (true, predicted) confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    support = confusion.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    accuracy = float(tp.sum() / total) if total else 0.0
    weights = support / support.sum() if support.sum() else np.zeros_like(support)
    metrics: dict[str, Any] = {"accuracy": accuracy}
    if top5_hits is not None:
        metrics["top5"] = top5_hits / total if total else 0.0
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        metrics[f"{name}_macro"] = float(values.mean())
    # single-label multiclass: micro precision, recall and F1 all equal accuracy
    metrics.update(precision_micro=accuracy, recall_micro=accuracy, f1_micro=accuracy)
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        metrics[f"{name}_weighted"] = float((values * weights).sum())
    metrics["per_class"] = {
        str(class_name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, class_name in enumerate(class_names)
    }
    metrics["confusion_matrix"] = confusion.tolist()
    metrics["num_samples"] = total
    return metrics
