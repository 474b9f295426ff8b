"""Classification metrics against scikit-learn on the same predictions, and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from tasks.metrics.classification import ClassificationMeter, metrics_from_confusion


@pytest.mark.parametrize("num_classes,seed", [(3, 0), (7, 1), (12, 2)])
def test_meter_equals_sklearn(num_classes: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (257,), generator=gen)
    targets[targets == num_classes - 1] = 0  # one class with no samples
    logits = torch.randn(257, num_classes, generator=gen) + 2.0 * torch.nn.functional.one_hot(targets, num_classes)
    meter = ClassificationMeter(num_classes)
    for chunk in range(0, 257, 50):
        meter.update(logits[chunk : chunk + 50], targets[chunk : chunk + 50])
    names = [f"class{i}" for i in range(num_classes)]
    got = meter.compute(names)

    y, p = targets.numpy(), logits.argmax(1).numpy()
    labels = list(range(num_classes))
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, p, labels=labels, average=average, zero_division=0
        )
        assert got[f"precision_{average}"] == pytest.approx(precision, abs=1e-12)
        assert got[f"recall_{average}"] == pytest.approx(recall, abs=1e-12)
        assert got[f"f1_{average}"] == pytest.approx(f1, abs=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    for i, name in enumerate(names):
        assert got["per_class"][name]["precision"] == pytest.approx(precision[i], abs=1e-12)
        assert got["per_class"][name]["recall"] == pytest.approx(recall[i], abs=1e-12)
        assert got["per_class"][name]["f1"] == pytest.approx(f1[i], abs=1e-12)
        assert got["per_class"][name]["support"] == support[i]
    assert got["confusion_matrix"] == confusion_matrix(y, p, labels=labels).tolist()
    if num_classes > 5:
        assert got["top5"] == pytest.approx(top_k_accuracy_score(y, logits.numpy(), k=5, labels=labels), abs=1e-12)
    else:
        assert "top5" not in got


def test_hand_computed_three_class_case() -> None:
    # true a: 2 right, 1 called b; true b: 1 right; true c: 1 called a, 1 right
    confusion = np.array([[2, 1, 0], [0, 1, 0], [1, 0, 1]])
    got = metrics_from_confusion(confusion, ["a", "b", "c"])
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["per_class"]["a"] == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "support": 3,
    }
    assert got["per_class"]["b"]["precision"] == pytest.approx(1 / 2)
    assert got["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert got["per_class"]["c"]["precision"] == pytest.approx(1.0)
    assert got["per_class"]["c"]["recall"] == pytest.approx(1 / 2)
    assert got["precision_macro"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert got["recall_weighted"] == pytest.approx(got["accuracy"])
    assert all(0.0 <= got[k] <= 1.0 for k in got if isinstance(got[k], float))
