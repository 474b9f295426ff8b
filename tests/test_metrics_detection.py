"""COCO metrics: faster-coco-eval equals pycocotools. VOC metrics: hand-computed devkit cases."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.metrics.coco import COCO_KEYS, coco_box_metrics
from tasks.metrics.voc import _voc_iou, to_voc_pixels, voc_box_metrics


def synthetic_coco(num_images: int = 30, seed: int = 0) -> tuple[dict, list[dict]]:
    """Ground truth with non-contiguous category ids, crowd boxes, empty images, all three sizes."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        if image_id % 7 == 0:
            continue  # no annotations: stays in evaluation
        for _ in range(rng.integers(1, 6)):
            w, h = rng.choice([12, 60, 200]) * rng.uniform(0.7, 1.3, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category = int(rng.choice([1, 5, 9]))
            crowd = int(rng.random() < 0.05)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                }
            )
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.08 * min(w, h), 4)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": category if rng.random() < 0.9 else 5,
                        "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                        "score": float(rng.random()),
                    }
                )
        for _ in range(rng.integers(0, 3)):  # false positives
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 5, 9])),
                    "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 380)), 50.0, 40.0],
                    "score": float(rng.random()),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}, results


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_equals_pycocotools(seed: int) -> None:
    gt, results = synthetic_coco(seed=seed)
    fast = coco_box_metrics(gt, results, backend="faster-coco-eval")
    reference = coco_box_metrics(gt, results, backend="pycocotools")
    for key in COCO_KEYS:
        assert fast[key] == pytest.approx(reference[key], abs=1e-6), key
    assert fast["per_class_AP"].keys() == reference["per_class_AP"].keys() == {"cat", "dog", "bird"}
    for name, value in reference["per_class_AP"].items():
        assert fast["per_class_AP"][name] == pytest.approx(value, abs=1e-6)
    assert 0 < reference["AP"] < reference["AP50"] <= 1
    # AP is the mean of the per-class APs
    assert np.mean(list(reference["per_class_AP"].values())) == pytest.approx(reference["AP"], abs=1e-9)


def test_perfect_and_empty_predictions() -> None:
    gt, _ = synthetic_coco(10)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    assert coco_box_metrics(gt, perfect)["AP"] == pytest.approx(1.0)
    empty = coco_box_metrics(gt, [])
    assert empty["AP"] == 0.0 and set(empty["per_class_AP"]) == {"cat", "dog", "bird"}


def test_voc_iou_uses_the_plus_one_pixel_convention() -> None:
    assert to_voc_pixels(np.array([[0.0, 0.0, 4.0, 4.0]])).tolist() == [[1.0, 1.0, 4.0, 4.0]]
    # 4x4 pixels against 4x3 pixels: 12 / 16 with VOC's inclusive widths (9 / 6 would give 0.667)
    assert _voc_iou(np.array([1.0, 1.0, 4.0, 4.0]), np.array([[1.0, 1.0, 4.0, 3.0]]))[0] == pytest.approx(0.75)


def _gt(boxes, labels, difficult=None):
    return {
        "boxes": np.array(boxes, float),
        "labels": np.array(labels),
        "difficult": np.array(difficult if difficult is not None else [False] * len(labels)),
    }


def _det(boxes, labels, scores):
    return {"boxes": np.array(boxes, float), "labels": np.array(labels), "scores": np.array(scores)}


def test_voc_difficult_objects_are_neither_hits_nor_misses() -> None:
    gt = {"im": _gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], [False, True])}
    det = {"im": _det([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 0, 0], [0.9, 0.8, 0.7])}
    # hit (0.9), ignored difficult (0.8), miss (0.7): recall 1 at precision 1, then precision 1/2
    metrics = voc_box_metrics(gt, det, ["a"])
    assert metrics["mAP07"] == pytest.approx(1.0) and metrics["mAP"] == pytest.approx(1.0)


def test_voc_eleven_point_and_area_differ_as_computed_by_hand() -> None:
    gt = {"i1": _gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0]), "i2": _gt([[0, 0, 10, 10]], [0])}
    det = {
        "i1": _det([[0, 0, 10, 10], [40, 40, 50, 50]], [0, 0], [0.9, 0.8]),  # hit, miss
        "i2": _det([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.7, 0.6]),  # hit, duplicate
    }
    # recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2
    # 11-point: 4 thresholds at 1, 3 at 2/3, 4 at 0 -> 6/11; area: 1/3 * 1 + 1/3 * 2/3 -> 5/9
    metrics = voc_box_metrics(gt, det, ["a", "b"])
    assert metrics["per_class_AP07"]["a"] == pytest.approx(6 / 11)
    assert metrics["per_class_AP"]["a"] == pytest.approx(5 / 9)
    assert metrics["per_class_AP"]["b"] is None  # no ground truth: left out of the mean
    assert metrics["mAP"] == pytest.approx(5 / 9) and metrics["mAP07"] == pytest.approx(6 / 11)


def test_voc_threshold_is_strictly_greater_than_half() -> None:
    gt = {"im": _gt([[0, 0, 10, 10]], [0])}
    half = voc_box_metrics(gt, {"im": _det([[0, 0, 10, 5]], [0], [1.0])}, ["a"])  # IoU exactly 0.5
    more = voc_box_metrics(gt, {"im": _det([[0, 0, 10, 6]], [0], [1.0])}, ["a"])
    assert half["mAP"] == 0.0 and more["mAP"] == pytest.approx(1.0)


def test_coco_eval_benchmark_backends_agree_on_its_synthetic_set() -> None:
    from tasks.bench import coco_eval_benchmark, synthetic_coco

    gt, results = synthetic_coco(30, 20, seed=3)
    assert len(results) == 600 and len({a["category_id"] for a in gt["annotations"]}) > 20
    row = coco_eval_benchmark(30, 20, rounds=1)
    assert row["max_difference"] < 1e-6 and 0 < row["AP"] < 1
    assert set(row["seconds"]) == {"faster-coco-eval", "pycocotools"}


def test_learning_reference_voc07_reads_coco_documents_as_the_devkit_would() -> None:
    """The detection reference of ``tasks.bench_learning`` scores COCO-style results with VOC2007's mAP:
    crowd boxes are difficult (neither hit nor miss), and a category it never predicts scores 0."""
    from tasks.bench_learning import _voc07

    document, _ = synthetic_coco(num_images=12, seed=3)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in document["annotations"]
        if not a["iscrowd"]
    ]
    assert _voc07(document, perfect) == pytest.approx(1.0)
    counted = {a["category_id"] for a in document["annotations"] if not a["iscrowd"]}
    assert len(counted) == 3
    without_dogs = [r for r in perfect if r["category_id"] != 5]
    assert _voc07(document, without_dogs) == pytest.approx(2 / 3)
    shifted = [{**r, "bbox": [r["bbox"][0] + r["bbox"][2], *r["bbox"][1:]]} for r in perfect]  # IoU 0: all misses
    assert _voc07(document, shifted) == pytest.approx(0.0)


def _devkit_voc_eval(ground_truth, detections, label, use_07):
    """The VOC devkit's evaluation of one class, ported loop by loop (VOCevaldet.m / voc_eval.py): inclusive
    pixel boxes, IoU strictly above 0.5, difficult objects ignored, duplicates false positives."""
    records, positives = {}, 0
    for image, target in ground_truth.items():
        mine = [i for i, lab in enumerate(target["labels"]) if lab == label]
        boxes = [[b[0] + 1, b[1] + 1, b[2], b[3]] for b in np.asarray(target["boxes"])[mine]]
        hard = [bool(target["difficult"][i]) for i in mine]
        records[image] = {"boxes": boxes, "difficult": hard, "seen": [False] * len(mine)}
        positives += sum(not h for h in hard)
    found = []
    for image, det in detections.items():
        for box, lab, score in zip(det["boxes"], det["labels"], det["scores"]):
            if lab == label:
                found.append((float(score), image, [box[0] + 1, box[1] + 1, box[2], box[3]]))
    found.sort(key=lambda f: -f[0])
    tp, fp = [], []
    for _, image, bb in found:
        record = records.get(image, {"boxes": [], "difficult": [], "seen": []})
        best, where = -np.inf, -1
        for j, gt in enumerate(record["boxes"]):
            iw = min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1
            ih = min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1
            if iw > 0 and ih > 0:
                inter = iw * ih
                union = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - inter
                if inter / union > best:
                    best, where = inter / union, j
        if best > 0.5:
            if record["difficult"][where]:
                tp.append(0), fp.append(0)
            elif not record["seen"][where]:
                record["seen"][where] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return (
            sum(max([p for r, p in zip(recall, precision) if r >= t], default=0.0) for t in np.arange(0, 1.1, 0.1)) / 11
        )
    mrec, mpre = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


@pytest.mark.parametrize("seed", range(6))
def test_voc_metrics_equal_a_port_of_the_devkit_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ground_truth, detections = {}, {}
    for image in range(int(rng.integers(3, 12))):
        count = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (count, 2))
        wh = rng.uniform(4, 80, (count, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], 1))  # whole pixels, as VOC's are
        labels = rng.integers(0, 3, count)
        ground_truth[image] = {"boxes": boxes, "labels": labels, "difficult": rng.random(count) < 0.15}
        kept = []
        for b in boxes:  # 0-2 detections per object, sometimes of another class
            for _ in range(int(rng.integers(0, 3))):
                kept.append(b + rng.normal(0, 0.15 * (b[2] - b[0]), 4))
        extra = rng.uniform(0, 220, (int(rng.integers(0, 4)), 2))
        kept += [np.array([x, y, x + 30, y + 25]) for x, y in extra]  # false positives
        label_of = [int(rng.integers(0, 3)) for _ in kept]
        for j, b in enumerate(kept):  # most detections near an object take its class
            near = [i for i, g in enumerate(boxes) if np.abs(g - b).max() < 0.5 * (g[2] - g[0]) + 1]
            if near and rng.random() < 0.85:
                label_of[j] = int(labels[near[0]])
        scores = rng.permutation(len(kept)) / max(len(kept), 1) + rng.uniform(0, 1e-3, len(kept))  # distinct
        detections[image] = {
            "boxes": np.array(kept).reshape(-1, 4),
            "labels": np.array(label_of, int),
            "scores": scores,
        }
    ours = voc_box_metrics(ground_truth, detections, ["a", "b", "c"])
    for label, name in enumerate(["a", "b", "c"]):
        if ours["per_class_AP"][name] is None:  # no non-difficult object of the class
            continue
        assert ours["per_class_AP07"][name] == pytest.approx(_devkit_voc_eval(ground_truth, detections, label, True))
        assert ours["per_class_AP"][name] == pytest.approx(_devkit_voc_eval(ground_truth, detections, label, False))


def _two_truths_three_detections() -> tuple[dict, list[dict]]:
    """One class, two true boxes; detections at 0.9 (hit), 0.8 (miss) and 0.7 (hit)."""
    truth = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}],
    }
    found = [
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [80, 0, 10, 10], "score": 0.8},
        {"image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "score": 0.7},
    ]
    return truth, found


@pytest.mark.parametrize("backend", ["faster-coco-eval", "pycocotools"])
def test_pr_and_f1_curves_by_hand(backend) -> None:
    from tasks.metrics.coco import coco_pr_curves
    from tasks.metrics.detection import f1_by_confidence

    truth, found = _two_truths_three_detections()
    curves = coco_pr_curves(truth, found, backend=backend)
    recall = np.asarray(curves["recall"])
    # interpolated precision: 1 up to recall 0.5 (the first hit), then 2/3 (two hits of three) up to 1
    expected = np.where(recall <= 0.5, 1.0, 2 / 3)
    np.testing.assert_allclose(curves["precision"]["cat"], expected, atol=1e-9)
    np.testing.assert_allclose(curves["scores"]["cat"], np.where(recall <= 0.5, 0.9, 0.7), atol=1e-9)
    assert curves["precision"]["dog"] == [None] * 101  # no ground truth
    ap50 = coco_box_metrics(truth, found, backend=backend)["per_class_AP50"]["cat"]
    assert np.mean(curves["precision"]["cat"]) == pytest.approx(ap50, abs=1e-9)  # the curve's area is its AP50
    f1 = f1_by_confidence(curves)
    confidence, mean = np.asarray(f1["confidence"]), np.asarray(f1["mean"])
    # keep ≥ c: up to 0.7 both hits at precision 2/3 (F1 0.8); up to 0.9 one hit at 1 (F1 2/3); above, none
    want = np.select([confidence <= 0.7, confidence <= 0.9], [0.8, 2 / 3], 0.0)
    np.testing.assert_allclose(mean, want, atol=1e-9)
    assert list(f1["per_class"]) == ["cat"] and (f1["best_f1"], f1["best_confidence"]) == (pytest.approx(0.8), 0.7)


def test_detection_confusion_matrix_by_hand() -> None:
    """Classes plus background at IoU 0.5 and a confidence, matched by overlap whatever the class."""
    from pathlib import Path

    from tasks.data.detection import DetectionData, DetectionSample
    from tasks.metrics.detection import detection_confusion

    def sample(image_id, boxes, labels, ignored=()):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        flags = np.asarray([i in ignored for i in range(len(boxes))], dtype=bool)
        return DetectionSample(image_id, Path(f"{image_id}.png"), 100, 100, boxes, np.asarray(labels, np.int64),
                               flags, np.zeros(len(boxes), bool))  # fmt: skip

    data = DetectionData(
        [
            # a cat found as a cat, a dog found as a cat, a dog missed, and a crowd box
            sample(1, [[0, 0, 20, 20], [40, 40, 60, 60], [70, 70, 90, 90], [0, 60, 30, 90]], [1, 2, 2, 1], (3,)),
            sample(2, [], []),  # no objects
        ],
        ["cat", "dog"],
        [3, 4],
        "t",
    )

    def found(image_id, box, name, score):
        x1, y1, x2, y2 = box
        return {"image_id": image_id, "category_name": name, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}

    results = [
        found(1, (0, 0, 20, 20), "cat", 0.9),  # hit
        found(1, (1, 1, 21, 21), "dog", 0.8),  # second detection on the same cat: a false positive dog
        found(1, (40, 40, 59, 60), "cat", 0.7),  # the dog, called a cat
        found(1, (70, 70, 90, 90), "dog", 0.2),  # below the confidence: the dog is missed
        found(1, (0, 60, 30, 90), "cat", 0.9),  # on the crowd box: counts nothing
        found(2, (10, 10, 30, 30), "dog", 0.6),  # nothing there: a false positive dog
    ]
    got = detection_confusion(data, results, confidence=0.5)
    #                   predicted cat, dog, background
    want = np.asarray([[1, 0, 0],  # true cat
                       [1, 0, 1],  # true dog: one called a cat, one missed
                       [0, 2, 0]])  # background: two dogs found where there is none  # fmt: skip
    np.testing.assert_array_equal(got, want)
    # Above IoU 0.96 the dog called a cat (IoU 380/400 = 0.95) no longer matches: a missed dog and a false cat.
    strict = detection_confusion(data, results, confidence=0.5, iou=0.96)
    np.testing.assert_array_equal(strict, [[1, 0, 0], [0, 0, 2], [1, 2, 0]])


def _kitti_cars(count: int = 40, *, kind: str = "Car", shift: float = 0.0):
    """``count`` images, each one ``kind`` 50 px square at (100, 100), fully seen, and a detection of it shifted
    right by ``shift`` px, the scores distinct (image i scores (i + 1) / 100)."""
    from tasks.data.kitti import KittiTruth

    truths, detections = {}, {}
    for i in range(count):
        box = [100.0, 100.0, 150.0, 150.0]
        truths[i] = KittiTruth((kind,), np.array([box]), np.zeros(1), np.zeros(1, np.int64))
        detections[i] = {
            "names": [kind],
            "boxes": np.array([[100.0 + shift, 100.0, 150.0 + shift, 150.0]]),
            "scores": [(i + 1) / 100],
        }
    return truths, detections


def _with(truth, kind: str, box: list[float], truncated: float = 0.0, occluded: int = 0):
    from tasks.data.kitti import KittiTruth

    return KittiTruth(
        (*truth.types, kind),
        np.vstack([truth.boxes, [box]]),
        np.append(truth.truncated, truncated),
        np.append(truth.occluded, occluded),
    )


def _ap40(metrics: dict, name: str = "Car") -> tuple[float, float, float]:
    return tuple(metrics["AP40"][name][level] for level in ("easy", "moderate", "hard"))


def test_kitti_ap_follows_the_devkits_recall_steps_by_hand() -> None:
    """KITTI's devkit (getThresholds, 41 points): with 40 objects and 40 hits the thresholds sit at recall
    1/40 .. 40/40 in points 0..39 and point 40 stays 0, so a perfect detector scores AP40 39/40 and AP11 10/11;
    one miss leaves 39 thresholds (38/40); one confident false positive makes every point 40/41 (39/41)."""
    from tasks.metrics.kitti import kitti_box_metrics

    truths, detections = _kitti_cars()
    metrics = kitti_box_metrics(truths, detections)
    assert _ap40(metrics) == pytest.approx((39 / 40,) * 3, abs=1e-12)
    assert metrics["AP11"]["Car"]["moderate"] == pytest.approx(10 / 11, abs=1e-12)
    assert metrics["AP40"]["Pedestrian"] == {"easy": None, "moderate": None, "hard": None}
    assert metrics["mAP40_moderate"] == pytest.approx(39 / 40, abs=1e-12)

    missed = {**detections, 0: {"names": [], "boxes": np.zeros((0, 4)), "scores": []}}
    assert _ap40(kitti_box_metrics(truths, missed)) == pytest.approx((38 / 40,) * 3, abs=1e-12)

    def plus_one(box: list[float], score: float = 1.0, kind: str = "Car") -> dict:
        first = detections[0]
        return {
            **detections,
            0: {
                "names": [*first["names"], kind],
                "boxes": np.vstack([first["boxes"], [box]]),
                "scores": [*first["scores"], score],
            },
        }

    false = plus_one([300.0, 100.0, 350.0, 150.0])
    assert _ap40(kitti_box_metrics(truths, false)) == pytest.approx((39 / 41,) * 3, abs=1e-12)
    # the same false positive inside a DontCare region, on a Van (Car's neighbour), or lower than the level's
    # height (30 px: below easy's 40, above the others' 25) is ignored
    regions = {**truths, 0: _with(truths[0], "DontCare", [290.0, 90.0, 360.0, 160.0])}
    assert _ap40(kitti_box_metrics(regions, false)) == pytest.approx((39 / 40,) * 3, abs=1e-12)
    vans = {**truths, 0: _with(truths[0], "Van", [300.0, 100.0, 350.0, 150.0])}
    assert _ap40(kitti_box_metrics(vans, false)) == pytest.approx((39 / 40,) * 3, abs=1e-12)
    trucks = {**truths, 0: _with(truths[0], "Truck", [300.0, 100.0, 350.0, 150.0])}  # no neighbour: counted
    assert _ap40(kitti_box_metrics(trucks, false)) == pytest.approx((39 / 41,) * 3, abs=1e-12)
    low = plus_one([300.0, 100.0, 350.0, 130.0])
    assert _ap40(kitti_box_metrics(truths, low)) == pytest.approx((39 / 40, 39 / 41, 39 / 41), abs=1e-12)
    # a Pedestrian false positive does not touch Car's figures
    assert _ap40(kitti_box_metrics(truths, plus_one([300.0, 100.0, 350.0, 150.0], kind="Pedestrian"))) == (
        pytest.approx((39 / 40,) * 3, abs=1e-12)
    )


def test_kitti_levels_and_overlaps_by_hand() -> None:
    """Each level counts the objects within its bounds (height above 40/25/25 px, occlusion at most
    0/1/2, truncation at most 0.15/0.3/0.5); a detection of an object outside the level is ignored. Car needs IoU
    above 0.7, Pedestrian above 0.5."""
    from tasks.metrics.kitti import kitti_box_metrics

    truths, detections = _kitti_cars()
    truths[0] = replace_fields(truths[0], occluded=[1])  # out of easy
    truths[1] = replace_fields(truths[1], truncated=[0.4])  # out of easy and moderate
    truths[2] = replace_fields(truths[2], boxes=[[100.0, 100.0, 150.0, 140.0]])  # not above 40 px: out of easy
    detections[2] = {**detections[2], "boxes": np.array([[100.0, 100.0, 150.0, 140.0]])}
    truths[3] = replace_fields(truths[3], boxes=[[100.0, 100.0, 150.0, 140.5]])  # above 40 px: in easy
    detections[3] = {**detections[3], "boxes": np.array([[100.0, 100.0, 150.0, 140.5]])}
    # easy counts 37 objects (36/40), moderate 39 (38/40), hard 40 (39/40)
    assert _ap40(kitti_box_metrics(truths, detections)) == pytest.approx((36 / 40, 38 / 40, 39 / 40), abs=1e-12)

    shifted = _kitti_cars(shift=12.5)  # IoU (50 - 12.5) / (50 + 12.5) = 0.6
    assert _ap40(kitti_box_metrics(*shifted)) == (0.0, 0.0, 0.0)
    walkers = _kitti_cars(kind="Pedestrian", shift=12.5)
    assert _ap40(kitti_box_metrics(*walkers), "Pedestrian") == pytest.approx((39 / 40,) * 3, abs=1e-12)


def replace_fields(truth, **fields):
    from dataclasses import replace

    return replace(truth, **{name: np.asarray(value) for name, value in fields.items()})
