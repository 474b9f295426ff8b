"""tasks.detect end to end on generated COCO and VOC data: outputs, re-scoring, predict and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.data.embedded import shapes_dataset
from tasks.detect import main

FAST = [
    "--backbone",
    "resnet18",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--set",
    "model.min_size=64",
    "--set",
    "model.max_size=64",
]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return shapes_dataset(tmp_path_factory.mktemp("shapes"), size=64, train_images=6, val_images=4)


@pytest.fixture(scope="module")
def trained(coco_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("detrun")
    assert main(["--data", str(coco_root), "--output", str(out), *FAST, "--set", "model.box_score_thresh=0.0"]) == 0
    return out


def _one_line_error(capsys, rc: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_train_writes_the_run_folder(trained, coco_root) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "last.pt", "best.pt", "metrics.json", "predictions.json", "images"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert len(list((trained / "images").glob("*.png"))) == 4
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "per_class_AP"} <= set(metrics["coco"])
    assert {"mAP07", "mAP", "per_class_AP07", "per_class_AP"} <= set(metrics["voc"])
    for section in ("coco", "voc"):
        for value in metrics[section].values():
            if isinstance(value, float):
                assert 0.0 <= value <= 1.0
    predictions = json.loads((trained / "predictions.json").read_text())
    assert predictions and set(predictions[0]) == {"image_id", "category_id", "category_name", "bbox", "score"}
    assert {p["category_name"] for p in predictions} <= {"square", "circle", "triangle"}
    assert torch.load(trained / "last.pt", weights_only=True)["task"] == "detect"
    assert {"results.csv", "results.png", "pr_curve.png", "f1_curve.png", "confusion_matrix.png"} <= names
    assert "confusion_matrix_normalized.png" in names
    matrix = metrics["confusion_matrix"]
    counts = np.asarray(matrix["counts"])
    assert matrix["iou"] == 0.5 and counts.shape == (4, 4) and counts[3, 3] == 0  # 3 classes and background
    # every true box is matched or missed once: the rows of the true classes hold the val split's boxes
    truth = json.loads((coco_root / "annotations" / "instances_val.json").read_text())["annotations"]
    assert counts[:3].sum() == sum(1 for a in truth if not a.get("iscrowd"))


def test_the_pr_curves_area_is_each_class_ap50_in_metrics_json(trained, coco_root) -> None:
    """Curves read from pycocotools' evaluator; metrics.json's AP50 per class from faster-coco-eval in training."""
    from tasks.data.coco import find_coco_split, read_coco
    from tasks.metrics.detection import pr_curves

    data = read_coco(*find_coco_split(coco_root, "val"))
    curves = pr_curves(data, json.loads((trained / "predictions.json").read_text()), backend="pycocotools")
    per_class = json.loads((trained / "metrics.json").read_text())["coco"]["per_class_AP50"]
    assert set(curves["precision"]) == set(per_class)
    assert any(value for value in per_class.values())  # not 0 == 0
    for name, precision in curves["precision"].items():
        area = None if all(p is None for p in precision) else float(np.mean([p or 0.0 for p in precision]))
        assert (area is None) == (per_class[name] is None), name
        if area is not None:
            assert area == pytest.approx(per_class[name], abs=1e-3), name


def test_pycocotools_rescoring_of_predictions_json_matches(trained, coco_root) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(coco_root / "annotations" / "instances_val.json"))
    predictions = json.loads((trained / "predictions.json").read_text())
    evaluator = COCOeval(gt, gt.loadRes(predictions), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["coco"]["AP"] == pytest.approx(max(evaluator.stats[0], 0.0), abs=1e-6)
    assert metrics["coco"]["AP50"] == pytest.approx(max(evaluator.stats[1], 0.0), abs=1e-6)


def test_eval_of_a_results_file_scores_as_pycocotools_does_with_ap_above_zero(coco_root, tmp_path) -> None:
    """The same scoring path as training's, on results that score well, so that 0 == 0 cannot pass."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(5)
    results = []
    for a in truth["annotations"]:
        x, y, w, h = a["bbox"]
        dx, dy = rng.normal(0, 0.06 * w), rng.normal(0, 0.06 * h)
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x + dx, y + dy, w, h],
                "score": float(rng.random()),
            }
        )
        results.append(  # a false positive of another class beside each object
            {
                "image_id": a["image_id"],
                "category_id": 1 + a["category_id"] % 3,
                "bbox": [x, y, w * 0.5, h],
                "score": float(rng.random()),
            }
        )
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "scored"
    args = ["eval", "--predictions", str(tmp_path / "results.json"), "--data", str(coco_root), "--output", str(out)]
    assert main(args) == 0
    gt = COCO(str(coco_root / "annotations" / "instances_val.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] > 0.2 and evaluator.stats[1] > 0.4  # a real score, not 0 == 0
    coco = json.loads((out / "metrics.json").read_text())["coco"]
    for index, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")):
        expected = evaluator.stats[index]  # -1: no objects of that size, which metrics.json writes as null
        assert coco[key] is None if expected < 0 else coco[key] == pytest.approx(expected, abs=1e-6), key


def test_eval_checkpoint_and_predictions_file_reproduce_training(trained, coco_root, tmp_path) -> None:
    want = json.loads((trained / "metrics.json").read_text())
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "last.pt"),
                "--data",
                str(coco_root),
                "--output",
                str(out),
                "--workers",
                "0",
                "--set",
                "model.min_size=64",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text()) == want
    scored = tmp_path / "scored"
    assert (
        main(
            [
                "eval",
                "--predictions",
                str(trained / "predictions.json"),
                "--data",
                str(coco_root),
                "--output",
                str(scored),
                "--coco-backend",
                "pycocotools",
            ]
        )
        == 0
    )
    got = json.loads((scored / "metrics.json").read_text())
    assert got["voc"] == want["voc"]
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert got["coco"][key] == pytest.approx(want["coco"][key], abs=1e-6)


def test_predicts_own_output_given_to_eval_is_named_as_such(trained, coco_root, tmp_path, capsys) -> None:
    """predict's predictions.json (per image, boxes by class name) is not the COCO results list that eval
    --predictions scores; the message says which file is which."""
    out = tmp_path / "predicted"
    assert (
        main(["predict", str(coco_root / "val"), "--checkpoint", str(trained / "best.pt"), "--output", str(out)]) == 0
    )
    capsys.readouterr()
    args = ["eval", "--predictions", str(out / "predictions.json"), "--data", str(coco_root)]
    rc = main([*args, "--output", str(tmp_path / "e")])
    _one_line_error(capsys, rc, f"predictions file {out / 'predictions.json'} must be a COCO results list")
    rc = main([*args, "--output", str(tmp_path / "e")])
    assert "(this is predict's per-image output; train and eval write one as predictions.json)" in (
        capsys.readouterr().err
    )


def test_category_name_decides_when_present(trained, coco_root, tmp_path) -> None:
    predictions = json.loads((trained / "predictions.json").read_text())
    for p in predictions:
        p["category_id"] = 999  # ids are wrong, names are right
    (tmp_path / "renamed.json").write_text(json.dumps(predictions))
    out = tmp_path / "o"
    assert (
        main(["eval", "--predictions", str(tmp_path / "renamed.json"), "--data", str(coco_root), "--output", str(out)])
        == 0
    )
    assert (
        json.loads((out / "metrics.json").read_text())["voc"]
        == json.loads((trained / "metrics.json").read_text())["voc"]
    )


def coco_to_voc(coco_root, target):
    """The same images and boxes in a VOC2007-style layout (1-based inclusive pixels)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (target / folder).mkdir(parents=True)
    for split, voc_split in (("train", "trainval"), ("val", "test")):
        data = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        ids = []
        for image in data["images"]:
            image_id = f"{split}_{image['id']:04d}"
            ids.append(image_id)
            Image.open(coco_root / split / image["file_name"]).convert("RGB").save(
                target / "JPEGImages" / f"{image_id}.jpg"
            )
            objects = ""
            for a in (a for a in data["annotations"] if a["image_id"] == image["id"]):
                x, y, w, h = a["bbox"]
                objects += (
                    f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{round(x) + 1}</xmin><ymin>{round(y) + 1}</ymin><xmax>{round(x + w)}</xmax>"
                    f"<ymax>{round(y + h)}</ymax></bndbox></object>"
                )
            (target / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>{image['width']}</width>"
                f"<height>{image['height']}</height></size>{objects}</annotation>"
            )
        (target / "ImageSets" / "Main" / f"{voc_split}.txt").write_text("\n".join(ids) + "\n")
    return target


def test_voc_layout_end_to_end(coco_root, tmp_path, capsys) -> None:
    root = coco_to_voc(coco_root, tmp_path / "voc")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert "names found in the annotations" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["voc"]["per_class_AP"]) == {"circle", "square", "triangle"}
    for p in json.loads((out / "predictions.json").read_text()):
        assert isinstance(p["image_id"], str) and p["image_id"].startswith("val_")
        assert p["category_id"] in (1, 2, 3)


def test_yolo_layout_end_to_end_in_the_datasets_own_ids(coco_root, tmp_path, capsys) -> None:
    """Ultralytics' layout trains and scores; predictions.json speaks YOLO's ids (classes from 0, image ids the
    file stems), and a results file in those ids scores as the ground truth with either COCO evaluator."""
    from tests.test_data_yolo import NAMES, coco_to_yolo

    root = coco_to_yolo(coco_root, tmp_path / "yolo")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["voc"]["per_class_AP"]) == set(metrics["coco"]["per_class_AP"]) == set(NAMES)
    for p in json.loads((out / "predictions.json").read_text()):
        assert p["image_id"] in ("00001", "00002", "00003", "00004") and p["category_name"] == NAMES[p["category_id"]]
    results = []
    for label_file in sorted((root / "labels" / "val").glob("*.txt")):
        for line in label_file.read_text().splitlines():
            cls, cx, cy, w, h = (float(v) for v in line.split())
            box = [(cx - w / 2) * 64, (cy - h / 2) * 64, w * 64, h * 64]
            results.append({"image_id": label_file.stem, "category_id": int(cls), "bbox": box, "score": 0.9})
    assert {r["category_id"] for r in results} >= {0}  # class id 0 is a class here, not the background
    (tmp_path / "perfect.json").write_text(json.dumps(results))
    for backend in ("faster-coco-eval", "pycocotools"):
        scored = tmp_path / backend
        argv = ["eval", "--predictions", str(tmp_path / "perfect.json"), "--data", str(root), "--output", str(scored)]
        assert main([*argv, "--coco-backend", backend]) == 0
        metrics = json.loads((scored / "metrics.json").read_text())
        assert metrics["coco"]["AP"] == pytest.approx(1.0) and metrics["voc"]["mAP"] == pytest.approx(1.0)
        assert all(metrics["coco"]["per_class_AP"][name] == pytest.approx(1.0) for name in NAMES)


def test_predict_writes_boxes_and_pictures(trained, coco_root, tmp_path) -> None:
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(coco_root / "val"),
                "--checkpoint",
                str(trained / "best.pt"),
                "--output",
                str(out),
                "--set",
                "show_score_thresh=0.0",
            ]
        )
        == 0
    )
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 4 and len(list(out.glob("*.png"))) == 4
    for result in results:
        for detection in result["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64
    scores = sorted(d["score"] for r in results for d in r["detections"])
    assert scores  # every detection the model kept (its own box_score_thresh)
    middle = scores[len(scores) // 2]
    argv = [
        "predict",
        str(coco_root / "val"),
        "--checkpoint",
        str(trained / "best.pt"),
        "--output",
        str(tmp_path / "m"),
    ]
    assert main([*argv, "--set", f"show_score_thresh={middle}"]) == 0
    shown = [d["score"] for r in json.loads((tmp_path / "m" / "predictions.json").read_text()) for d in r["detections"]]
    assert sorted(shown) == [s for s in scores if s >= middle]  # one setting: what is listed is what is drawn


def test_predict_save_txt_writes_yolo_label_files_that_data_reads_back(trained, coco_root, tmp_path, capsys) -> None:
    from tasks.data.yolo import read_label_file

    categories = json.loads((coco_root / "annotations" / "instances_val.json").read_text())["categories"]
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]  # the class ids 0, 1, 2
    argv = ["predict", str(coco_root / "val"), "--checkpoint", str(trained / "best.pt"), "--set", "show_score_thresh=0"]
    out = tmp_path / "pred"
    assert main([*argv, "--output", str(out), "--save-txt"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert sum(len(r["detections"]) for r in results) > 0
    for result in results:
        lines = read_label_file(out / result["labels"], keypoints=False)  # the reader of --data's YOLO labels
        assert len(lines) == len(result["detections"])
        for line, detection in zip(lines, result["detections"]):
            assert names[line.cls] == detection["class"] and line.polygon is None
            np.testing.assert_allclose(np.array(line.box) * 64, detection["box"], atol=0.006)  # json: 2 decimals
    scored = tmp_path / "scored"
    assert main([*argv, "--output", str(scored), "--save-txt", "--save-conf"]) == 0
    result = next(r for r in json.loads((scored / "predictions.json").read_text()) if r["detections"])
    first = (scored / result["labels"]).read_text().splitlines()[0].split()
    assert len(first) == 6 and float(first[5]) == pytest.approx(result["detections"][0]["score"], rel=1e-5)
    capsys.readouterr()
    _one_line_error(capsys, main([*argv, "--save-conf"]), "--save-conf adds the score to the lines of --save-txt")


def test_predict_cam_writes_eigen_cam_maps_at_each_images_size(trained, coco_root, tmp_path, capsys) -> None:
    from PIL import Image

    out = tmp_path / "cam"
    assert (
        main(
            ["predict", str(coco_root / "val"), "--checkpoint", str(trained / "best.pt"), "--output", str(out), "--cam"]
        )
        == 0
    )
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 4 and "EigenCAM heat maps" in capsys.readouterr().out
    for result in results:
        with Image.open(result["path"]) as image, Image.open(out / result["cam"]) as heat:
            assert heat.size == image.size and heat.mode == "RGB"
    rc = main(["predict", str(coco_root / "val"), "--checkpoint", str(trained / "best.pt"), "--cam-class", "square"])
    _one_line_error(capsys, rc, "unrecognized arguments: --cam-class")  # EigenCAM has no class to choose


# ---- bad input ----


def test_malformed_json_and_missing_image(coco_root, tmp_path, capsys) -> None:
    root = tmp_path / "c"
    shutil.copytree(coco_root, root)
    (root / "annotations" / "instances_val.json").write_text("{not json")
    _one_line_error(capsys, main(["--data", str(root), *FAST]), "instances_val.json", "not valid JSON")
    shutil.copy(coco_root / "annotations" / "instances_val.json", root / "annotations" / "instances_val.json")
    next((root / "train").glob("*.png")).unlink()
    _one_line_error(capsys, main(["--data", str(root), *FAST]), "does not exist", "instances_train.json")


def test_a_bad_yolo_label_line_is_one_line_naming_file_and_line(coco_root, tmp_path, capsys) -> None:
    from tests.test_data_yolo import coco_to_yolo

    root = coco_to_yolo(coco_root, tmp_path / "yolo")
    label = next((root / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n")
    rc = main(["--data", str(root), "--output", str(tmp_path / "run"), *FAST])
    _one_line_error(capsys, rc, str(label), "class id 7 is past the 3 classes of dataset file")
    assert not (tmp_path / "run").exists()


def test_unknown_class_name_and_empty_split(coco_root, tmp_path, capsys) -> None:
    root = coco_to_voc(coco_root, tmp_path / "voc")
    rc = main(["--data", str(root), *FAST, "--set", "data.classes=[square, circle]"])
    _one_line_error(capsys, rc, "unknown class name", "triangle")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n")
    _one_line_error(capsys, main(["--data", str(root), *FAST]), "test.txt", "lists no images")


def test_checkpoint_of_another_class_count_or_task(trained, coco_root, tmp_path, capsys) -> None:
    checkpoint = torch.load(trained / "best.pt", weights_only=True)
    checkpoint["model_args"]["num_classes"] = 6
    torch.save(checkpoint, tmp_path / "six.pt")
    rc = main(["eval", "--checkpoint", str(tmp_path / "six.pt"), "--data", str(coco_root)])
    _one_line_error(capsys, rc, "six.pt")
    checkpoint["task"] = "classify"
    torch.save(checkpoint, tmp_path / "cls.pt")
    rc = main(["eval", "--checkpoint", str(tmp_path / "cls.pt"), "--data", str(coco_root)])
    _one_line_error(capsys, rc, "cls.pt", "'classify' model")


def test_boxes_outside_are_clipped_and_degenerate_dropped_with_a_warning(coco_root, tmp_path, capsys) -> None:
    root = tmp_path / "c"
    shutil.copytree(coco_root, root)
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [50.0, 50.0, 40.0, 40.0]
    data["annotations"][1]["bbox"] = [10.0, 10.0, -5.0, 4.0]
    path.write_text(json.dumps(data))
    assert main(["--data", str(root), "--output", str(tmp_path / "r"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "clipped 1 box(es)" in out and "dropped 1 zero-area or inverted box(es)" in out
    np.testing.assert_equal(json.loads(path.read_text())["annotations"][0]["bbox"], [50.0, 50.0, 40.0, 40.0])


def test_predict_skips_and_counts_an_unreadable_image_inside_a_folder(trained, coco_root, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(coco_root / "val", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert (
        main(["predict", str(folder), "--checkpoint", str(trained / "best.pt"), "--output", str(tmp_path / "p")]) == 0
    )
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "1 unreadable skipped" in captured.out
    assert len(json.loads((tmp_path / "p" / "predictions.json").read_text())) == 4
    rc = main(
        [
            "predict",
            str(folder / "broken.png"),
            "--checkpoint",
            str(trained / "best.pt"),
            "--output",
            str(tmp_path / "q"),
        ]
    )
    _one_line_error(capsys, rc, "broken.png", "not a readable image")
    assert not (tmp_path / "q").exists()  # refused before the run folder is made


def test_eval_on_voc_uses_the_checkpoints_classes(coco_root, tmp_path) -> None:
    import re

    root = coco_to_voc(coco_root, tmp_path / "voc")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    for xml in (root / "Annotations").glob("val_*.xml"):  # the val split now shows only squares
        text = xml.read_text()
        xml.write_text(re.sub(r"<object><name>(circle|triangle)</name>.*?</object>", "", text))
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "best.pt"),
                "--data",
                str(root),
                "--output",
                str(tmp_path / "eval"),
                "--set",
                "model.min_size=64",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["voc"]["per_class_AP"]) == {"circle", "square", "triangle"}
    assert metrics["voc"]["per_class_AP"]["circle"] is None  # no ground truth left in val


def test_eval_predictions_file_on_voc_data(coco_root, tmp_path) -> None:
    """A results file in VOC ids (id strings, 1-based class positions, no names) scores as the ground truth."""
    import xml.etree.ElementTree as ET

    root = coco_to_voc(coco_root, tmp_path / "voc")
    classes = ["circle", "square", "triangle"]  # the sorted names: VOC's rule 3
    results = []
    for xml in sorted((root / "Annotations").glob("val_*.xml")):
        for obj in ET.parse(xml).findall("object"):
            b = {k: float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")}
            box = [b["xmin"] - 1, b["ymin"] - 1, b["xmax"] - b["xmin"] + 1, b["ymax"] - b["ymin"] + 1]
            results.append(
                {
                    "image_id": xml.stem,
                    "category_id": classes.index(obj.findtext("name")) + 1,
                    "bbox": box,
                    "score": 0.9,
                }
            )
    (tmp_path / "perfect.json").write_text(json.dumps(results))
    out = tmp_path / "scored"
    assert (
        main(["eval", "--predictions", str(tmp_path / "perfect.json"), "--data", str(root), "--output", str(out)]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["voc"]["mAP"] == pytest.approx(1.0) and metrics["voc"]["mAP07"] == pytest.approx(1.0)
    assert metrics["coco"]["AP"] == pytest.approx(1.0)  # IoU 1 at every threshold: the boxes convert exactly
    written = json.loads((out / "predictions.json").read_text())
    assert [(p["category_id"], p["category_name"]) for p in written] == [
        (r["category_id"], classes[r["category_id"] - 1]) for r in results
    ]
    assert len(list((out / "images").glob("*.png"))) == 4
    for r in results:  # one pixel off on every box: COCO's strict thresholds notice, VOC's 0.5 does not
        r["bbox"][0] += 1
    (tmp_path / "shifted.json").write_text(json.dumps(results))
    out = tmp_path / "shifted"
    assert (
        main(["eval", "--predictions", str(tmp_path / "shifted.json"), "--data", str(root), "--output", str(out)]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["voc"]["mAP"] == pytest.approx(1.0) and metrics["coco"]["AP"] < 0.99


def test_xml_beside_the_images_trains_and_a_perfect_results_file_scores_1(coco_root, tmp_path, capsys) -> None:
    """Roboflow's Pascal VOC export (train/ and valid/, each image beside its XML file) trains end to end, and a
    results file of its own boxes scores AP 1.0: the boxes and ids read as in VOC's layout."""
    import xml.etree.ElementTree as ET

    voc = coco_to_voc(coco_root, tmp_path / "voc")
    export = tmp_path / "export"
    for voc_split, split in (("trainval", "train"), ("test", "valid")):
        (export / split).mkdir(parents=True)
        for image_id in (voc / "ImageSets" / "Main" / f"{voc_split}.txt").read_text().split():
            shutil.copy(voc / "JPEGImages" / f"{image_id}.jpg", export / split)
            shutil.copy(voc / "Annotations" / f"{image_id}.xml", export / split)
    out = tmp_path / "run"
    assert main(["--data", str(export), "--output", str(out), *FAST]) == 0
    assert "names found in the annotations" in capsys.readouterr().out
    assert set(json.loads((out / "metrics.json").read_text())["voc"]["per_class_AP"]) == {
        "circle",
        "square",
        "triangle",
    }
    classes = ["circle", "square", "triangle"]
    results = []
    for xml in sorted((export / "valid").glob("*.xml")):
        for obj in ET.parse(xml).findall("object"):
            b = {k: float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")}
            box = [b["xmin"] - 1, b["ymin"] - 1, b["xmax"] - b["xmin"] + 1, b["ymax"] - b["ymin"] + 1]
            results.append({"image_id": xml.stem, "category_id": classes.index(obj.findtext("name")) + 1,
                            "bbox": box, "score": 0.9})  # fmt: skip
    (tmp_path / "perfect.json").write_text(json.dumps(results))
    scored = tmp_path / "scored"
    argv = ["eval", "--predictions", str(tmp_path / "perfect.json"), "--data", str(export), "--output", str(scored)]
    assert main(argv) == 0
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["voc"]["mAP"] == pytest.approx(1.0) and metrics["coco"]["AP"] == pytest.approx(1.0)


def test_a_labelimg_folder_holds_out_a_fifth_by_hash_and_eval_scores_the_same_images(coco_root, tmp_path, capsys):
    """One folder of images with their XML files beside them (LabelImg's) has no val split: a fifth of the images,
    those of the smallest SHA-1 of their file name, are held out; eval of the checkpoint scores them again."""
    import hashlib

    voc = coco_to_voc(coco_root, tmp_path / "voc")
    folder = tmp_path / "labelled"
    folder.mkdir()
    for path in [*(voc / "JPEGImages").iterdir(), *(voc / "Annotations").iterdir()]:
        shutil.copy(path, folder)
    out = tmp_path / "run"
    assert main(["--data", str(folder), "--output", str(out), *FAST, "--set", "model.box_score_thresh=0.0"]) == 0
    assert "holding out 20% for validation (2 of 10 images" in capsys.readouterr().out
    names = sorted((p.name for p in folder.glob("*.jpg")), key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    held = {Path(n).stem for n in names[:2]}
    predicted = {p["image_id"] for p in json.loads((out / "predictions.json").read_text())}
    assert predicted == held
    trained = json.loads((out / "metrics.json").read_text())
    evaluated = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(folder), "--output", str(evaluated)]
    assert main([*argv, "--set", "model.box_score_thresh=0.0"]) == 0
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["voc"]["mAP"] == pytest.approx(trained["voc"]["mAP"], abs=1e-6)
    assert again["coco"]["AP"] == pytest.approx(trained["coco"]["AP"], abs=1e-6)
    assert {p["image_id"] for p in json.loads((evaluated / "predictions.json").read_text())} == predicted


def test_eval_scores_the_images_it_read_as_if_an_unreadable_one_were_not_in_the_split(
    trained, coco_root, tmp_path, capsys
) -> None:
    """One corrupt val image: skipped and counted, and scored as torchvision's reference evaluator scores the
    images it was given, so its objects are not counted as missed. The reference is the same predictions scored
    by pycocotools on the split's annotations with that image removed."""
    broken = tmp_path / "broken"
    shutil.copytree(coco_root, broken)
    annotations = json.loads((broken / "annotations" / "instances_val.json").read_text())
    lost = annotations["images"][0]
    assert any(a["image_id"] == lost["id"] for a in annotations["annotations"])  # it has objects to miss
    (broken / "val" / lost["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "eval"
    flags = ["--output", str(out), "--workers", "0", "--set", "model.min_size=64", "--coco-backend", "pycocotools"]
    assert main(["eval", "--checkpoint", str(trained / "best.pt"), "--data", str(broken), *flags]) == 0
    printed = capsys.readouterr()
    assert lost["file_name"] in printed.err
    assert "skipped 1 unreadable validation image(s); the metrics are over the 3 read" in printed.out
    got = json.loads((out / "metrics.json").read_text())
    assert got["num_images"] == len(annotations["images"]) - 1
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and all(p["image_id"] != lost["id"] for p in predictions)

    without = tmp_path / "without"  # the reference: the split as if the image had never been in it
    shutil.copytree(coco_root, without)
    annotations["images"] = annotations["images"][1:]
    annotations["annotations"] = [a for a in annotations["annotations"] if a["image_id"] != lost["id"]]
    (without / "annotations" / "instances_val.json").write_text(json.dumps(annotations))
    scored = tmp_path / "scored"
    args = ["eval", "--predictions", str(out / "predictions.json"), "--data", str(without), "--output", str(scored)]
    assert main([*args, "--coco-backend", "pycocotools"]) == 0
    want = json.loads((scored / "metrics.json").read_text())
    assert got["voc"] == want["voc"]
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert got["coco"][key] == pytest.approx(want["coco"][key], abs=1e-6)


def test_kitti_as_downloaded_reads_as_torchvisions_kitti_and_trains_with_val_held_out(tmp_path, capsys) -> None:
    """training/image_2/ with training/label_2/ (torchvision.datasets.Kitti's layout under Kitti/raw/): the same
    boxes and types as torchvision reads, DontCare regions counted and kept as crowd regions of every class (not
    trained on), a fifth held out for val."""
    from torchvision.datasets import Kitti

    from tasks.data.detection_splits import load_detection_splits
    from tasks.data.kitti import CLASSES

    root = tmp_path / "Kitti" / "raw"
    rng = np.random.default_rng(0)
    types = ["Car", "Pedestrian", "Cyclist", "Van", "DontCare"]
    for i in range(10):
        (root / "training" / "image_2").mkdir(parents=True, exist_ok=True)
        (root / "training" / "label_2").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 96, 3), np.uint8)).save(
            root / "training" / "image_2" / f"{i:06d}.png"
        )
        lines = []
        for j in range(1 + i % 3):
            x, y = 5.0 + 20 * j + i, 4.0 + 2 * j
            kind = types[(i + j) % len(types)]
            levels = "-1 -1" if kind == "DontCare" else f"{0.15 * j:.2f} {(i + j) % 4}"
            lines.append(
                f"{kind} {levels} -1.58 {x:.2f} {y:.2f} {x + 17.5:.2f} {y + 30.25:.2f} 1.6 1.6 3.9 1 2 30 -1.6"
            )
        (root / "training" / "label_2" / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    reference = Kitti(str(tmp_path), train=True)
    expected, truths = {}, {}
    for index, image in enumerate(reference.images):
        objects = [o for o in reference._parse_target(index) if o["type"] != "DontCare"]
        regions = [o["bbox"] for o in reference._parse_target(index) if o["type"] == "DontCare"]
        expected[Path(image).stem] = (
            [o["bbox"] for o in objects],
            [CLASSES.index(o["type"]) + 1 for o in objects],
            regions,
        )
        every = reference._parse_target(index)  # what KITTI's own evaluation reads: every line, as written
        truths[Path(image).stem] = (
            [o["type"] for o in every],
            [o["bbox"] for o in every],
            [o["truncated"] for o in every],
            [o["occluded"] for o in every],
        )
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    printed = capsys.readouterr().out
    assert "holding out 20% for validation (2 of 10 images" in printed and "DontCare region(s)" in printed
    assert len(train.samples) == 8 and len(val.samples) == 2 and train.class_names == list(CLASSES)
    assert sum(len(regions) for _, _, regions in expected.values()) == 4
    for sample in train.samples + val.samples:
        boxes, labels, regions = expected[sample.image_id]
        trained_boxes, trained_labels = sample.training_targets()
        np.testing.assert_allclose(trained_boxes, np.array(boxes, np.float32).reshape(-1, 4), atol=1e-4)
        assert trained_labels.tolist() == labels
        crowd = np.array(regions, np.float32).reshape(-1, 1, 4).repeat(len(CLASSES), axis=1).reshape(-1, 4)
        np.testing.assert_allclose(sample.boxes[sample.crowd], crowd, atol=1e-4)
        assert sample.labels[sample.crowd].tolist() == list(range(1, len(CLASSES) + 1)) * len(regions)
        types, boxes, truncated, occluded = truths[sample.image_id]
        assert sample.kitti is not None and list(sample.kitti.types) == types
        np.testing.assert_allclose(sample.kitti.boxes, np.array(boxes).reshape(-1, 4), atol=1e-9)
        assert sample.kitti.truncated.tolist() == truncated and sample.kitti.occluded.tolist() == occluded
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    assert set(metrics["kitti"]["AP40"]) == {"Car", "Pedestrian", "Cyclist"}
    printed = capsys.readouterr().out
    assert "KITTI AP40   Car " in printed and "kitti/ (a result file per image)" in printed
    # kitti/<image>.txt, the devkit's input: every val image has one, its lines the predictions, and scoring the
    # files read back gives metrics.json's figures
    from tasks.metrics.kitti import kitti_box_metrics

    predictions = json.loads((out / "predictions.json").read_text())
    files = sorted((out / "kitti").glob("*.txt"))
    assert [f.stem for f in files] == sorted(s.image_id for s in val.samples)
    detections = {}
    for f in files:
        rows = [line.split() for line in f.read_text().splitlines()]
        assert all(len(row) == 16 and row[1:4] == ["-1", "-1", "-10"] for row in rows)
        mine = [p for p in predictions if p["image_id"] == f.stem]
        assert [row[0] for row in rows] == [p["category_name"] for p in mine]
        detections[f.stem] = {
            "names": [row[0] for row in rows],
            "boxes": np.array([[float(v) for v in row[4:8]] for row in rows]).reshape(-1, 4),
            "scores": [float(row[15]) for row in rows],
        }
    assert sum(len(d["names"]) for d in detections.values()) == len(predictions) > 0
    again = kitti_box_metrics({s.image_id: s.kitti for s in val.samples}, detections)
    assert again["AP40"] == metrics["kitti"]["AP40"] and again["AP11"] == metrics["kitti"]["AP11"]
    # eval --predictions <folder of result files>: another tool's KITTI results scored with all three protocols;
    # files of images outside the split are left out with a note
    (out / "kitti" / "999999.txt").write_text("Car -1 -1 -10 1 2 30 40 -1 -1 -1 -1000 -1000 -1000 -10 0.9\n")
    scored = tmp_path / "scored"
    assert main(["eval", "--data", str(root), "--predictions", str(out / "kitti"), "--output", str(scored)]) == 0
    assert "note: 1 result file(s) in" in capsys.readouterr().out
    rescored = json.loads((scored / "metrics.json").read_text())
    assert metrics["kitti"]["mAP40_moderate"] is not None
    for protocol, key in (("coco", "AP"), ("coco", "AP50"), ("voc", "mAP"), ("kitti", "mAP40_moderate")):
        assert rescored[protocol][key] == pytest.approx(metrics[protocol][key], abs=1e-6), (protocol, key)
    assert rescored["num_detections"] == len(predictions)
    # predict --save-kitti: a result file per image with every detection the model keeps, not only those shown
    shown = tmp_path / "shown"
    paths = [str(s.path) for s in val.samples]
    argv = ["predict", *paths, "--checkpoint", str(out / "best.pt"), "--output", str(shown), "--save-kitti"]
    assert main(argv) == 0
    assert "KITTI result files in kitti/" in capsys.readouterr().out
    entries = json.loads((shown / "predictions.json").read_text())
    written = 0
    for entry, sample in zip(entries, val.samples):
        rows = [line.split() for line in (shown / "kitti" / f"{sample.image_id}.txt").read_text().splitlines()]
        assert all(len(row) == 16 for row in rows) and {row[0] for row in rows} <= set(val.class_names)
        assert len(rows) >= len(entry["detections"])  # the shown ones are those over show_score_thresh
        written += len(rows)
    assert written > 0
    bad = out / "kitti" / f"{val.samples[0].image_id}.txt"
    bad.write_text("Car -1 -1 -10 1 2 30 40 -1 -1 -1 -1000 -1000 -1000 -10\n")  # no score
    assert (
        main(["eval", "--data", str(root), "--predictions", str(out / "kitti"), "--output", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"result file {bad}, line 1: expected 16 fields" in err
    (root / "training" / "label_2" / "000003.txt").write_text("Car 0.00 0 -1.58 5 4 22 34\n")
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "000003.txt, line 1: expected 15 fields" in err
    assert not (tmp_path / "bad").exists()
    (root / "training" / "label_2" / "000003.txt").write_text("Car 0.00 partly -1.58 5 4 22 34 1.6 1.6 3.9 1 2 30 0\n")
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "000003.txt, line 1: truncated '0.00' and occluded 'partly'" in err


def test_kitti_imagesets_lists_give_the_published_train_and_val_split(tmp_path, capsys) -> None:
    """ImageSets/train.txt and val.txt beside training/ (the 3DOP split that mmdetection3d and OpenPCDet ship): the
    default splits are those lists, not a held-out fifth; a listed image that is missing is left out and counted;
    without the lists the val split is held out as before."""
    from tasks.data.detection_splits import load_detection_splits

    root = tmp_path / "kitti"
    for folder in ("image_2", "label_2"):
        (root / "training" / folder).mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (60, 40)).save(root / "training" / "image_2" / f"{i:06d}.png")
        (root / "training" / "label_2" / f"{i:06d}.txt").write_text(
            "Car 0.00 0 -1.58 5 4 22 34 1.6 1.6 3.9 1 2 30 -1.6\n"
        )
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("".join(f"{i:06d}\n" for i in (0, 2, 4, 6, 8, 9)))
    (root / "ImageSets" / "val.txt").write_text("000001\n000003\n000005\n000007\n000042\n")
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert [s.image_id for s in train.samples] == ["000000", "000002", "000004", "000006", "000008", "000009"]
    assert [s.image_id for s in val.samples] == ["000001", "000003", "000005", "000007"]
    assert val.fixes.unreadable == 1 and "holding out" not in capsys.readouterr().out
    (root / "ImageSets" / "test.txt").write_text("000000\n")  # testing/'s ids: never read as training/'s
    from tasks.errors import UserError

    with pytest.raises(UserError, match=r"has no split 'test'"):
        load_detection_splits(root, fmt="auto", train_split=None, val_split="test", classes=None)
    shutil.rmtree(root / "ImageSets")
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert len(train.samples) == 8 and len(val.samples) == 2
    assert "holding out 20% for validation" in capsys.readouterr().out


def test_a_detection_inside_a_kitti_dontcare_region_costs_nothing_in_either_protocol(tmp_path) -> None:
    """A DontCare region ignores a detection of any class inside it: with the region, a perfect detector plus one
    confident false detection in the region scores COCO AP50 and VOC mAP 1; the same label file with the region
    dropped scores that false detection as a false positive (hand-computed)."""
    from tasks.data.kitti import read_kitti
    from tasks.metrics.detection import score

    def kitti(root: Path, region: bool) -> Path:
        (root / "training" / "image_2").mkdir(parents=True)
        (root / "training" / "label_2").mkdir()
        Image.new("RGB", (100, 60)).save(root / "training" / "image_2" / "000000.png")
        lines = [
            "Car 0.00 0 -1.58 10 10 30 30 1.6 1.6 3.9 1 2 30 -1.6",
            "Pedestrian 0.00 0 -1.58 35 5 45 40 1.6 1.6 3.9 1 2 30 -1.6",
            "Cyclist 0.00 0 -1.58 45 10 60 40 1.6 1.6 3.9 1 2 30 -1.6",
        ]
        if region:
            lines.append("DontCare -1 -1 -10 60 5 99 55 -1 -1 -1 -1000 -1000 -1000 -10")
        (root / "training" / "label_2" / "000000.txt").write_text("\n".join(lines) + "\n")
        return root

    truth = [("Car", [10, 10, 20, 20]), ("Pedestrian", [35, 5, 10, 35]), ("Cyclist", [45, 10, 15, 30])]
    results = [
        {"image_id": "000000", "category_name": name, "bbox": box, "score": 0.9 - 0.1 * n}
        for n, (name, box) in enumerate(truth)
    ]

    def scores(region: bool, false_box: list[float]) -> tuple[float, float]:
        data = read_kitti(kitti(tmp_path / f"{region}{false_box}", region), "training")
        labels = {name: data.class_names.index(name) + 1 for name in data.class_names}
        false = [  # one false detection of each class, ranked above the true ones, inside the region
            {"image_id": "000000", "category_name": name, "bbox": false_box, "score": 0.95} for name, _ in truth
        ]
        scored = [{**r, "category_id": labels[r["category_name"]]} for r in results + false]
        metrics = score(data, scored, backend="pycocotools")
        return metrics["coco"]["AP50"], metrics["voc"]["mAP"]

    large, small = [62, 8, 35, 45], [70, 10, 10, 20]  # IoU with the region (60-99, 5-55) 0.81 and 0.10
    assert scores(True, large) == pytest.approx((1.0, 1.0), abs=1e-6)
    # each class without the region: the false detection first, then the true one: precision 1/2 at recall 1
    assert scores(False, large) == pytest.approx((0.5, 0.5), abs=1e-6)
    # a small detection in a large region: COCO's crowd rule (the share of the detection inside) ignores it, the
    # VOC devkit's difficult rule (IoU 0.5) does not
    assert scores(True, small) == pytest.approx((1.0, 0.5), abs=1e-6)


def test_labelme_files_beside_their_images_give_the_boxes_around_their_shapes(tmp_path, capsys) -> None:
    """LabelMe's JSON beside each image (one flat folder, val held out): a rectangle's corners, a polygon's and a
    line's extent, a circle's disc (hand-computed here); points skipped and counted; classes from labels.txt."""
    from tasks.data.detection_splits import load_detection_splits

    root = tmp_path / "labelme"
    root.mkdir()
    (root / "labels.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)).save(root / f"photo{i}.jpg")
        shapes = [
            {"label": "cat", "points": [[30 + i, 40], [10 + i, 5]], "shape_type": "rectangle"},
            {"label": "dog", "points": [[50, 10], [70, 12], [60, 30 + i]], "shape_type": "polygon"},
            {"label": "dog", "points": [[20, 30], [20, 30 + 1 + i % 4]], "shape_type": "circle"},
            {"label": "cat", "points": [[5, 5]], "shape_type": "point"},
        ]
        expected[f"photo{i}"] = (
            [[10 + i, 5, 30 + i, 40], [50, 10, 70, 30 + i], [19 - i % 4, 29 - i % 4, 21 + i % 4, 31 + i % 4]],
            [1, 2, 2],
        )
        document = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"photo{i}.jpg", "imageData": None}
        (root / f"photo{i}.json").write_text(json.dumps({**document, "imageHeight": 60, "imageWidth": 80}))
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    printed = capsys.readouterr().out
    assert (
        f"classes ({root / 'labels.txt'}): cat, dog" in printed and "holding out 20% for validation (2 of 10" in printed
    )
    assert "skipped 10 point shape(s)" in printed  # one read of the folder, then split
    assert len(train.samples) == 8 and len(val.samples) == 2
    for sample in train.samples + val.samples:
        boxes, labels = expected[sample.image_id]
        np.testing.assert_allclose(sample.boxes, np.array(boxes, np.float32), atol=1e-5)
        assert sample.labels.tolist() == labels
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2
    broken = json.loads((root / "photo4.json").read_text())
    broken["shapes"][0]["label"] = "bird"
    (root / "photo4.json").write_text(json.dumps(broken))
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "photo4.json: label 'bird' is not a class (cat, dog)" in err
    assert not (tmp_path / "bad").exists()


def test_labelme_files_that_embed_their_images_are_read_without_the_image_files(tmp_path, monkeypatch, capsys) -> None:
    """LabelMe's default save embeds the image (imageData, base64 of a PNG or JPEG file's bytes). With only the JSON
    files, each embedded image is written once into the cache with the suffix of its format, and read to the
    pixel; a file beside the JSON wins over the copy; an undecodable copy is skipped and counted; imageData that is
    not base64 stops the run with one line naming the file."""
    import base64
    import io

    from tasks.data.detection_splits import load_detection_splits

    cache = tmp_path / "cache"
    monkeypatch.setenv("MTB_CACHE", str(cache))
    root = tmp_path / "labelme"
    root.mkdir()
    rng = np.random.default_rng(0)
    pixels, encoded = {}, {}
    for i in range(10):
        image = rng.integers(0, 255, (30 + i, 40, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG" if i % 2 else "JPEG", quality=95)
        pixels[f"shot{i}"] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")) if i else image
        encoded[f"shot{i}"] = buffer.getvalue()
        if i == 0:  # the image file beside it, as well as embedded: the file is read
            Image.fromarray(image).save(root / "shot0.png")
        shapes = [{"label": "cat", "points": [[2, 3], [12 + i, 20]], "shape_type": "rectangle"}]
        data = base64.b64encode(buffer.getvalue()).decode()
        document = {"shapes": shapes, "imagePath": f"../gone/shot{i}.jpg", "imageData": data}
        (root / f"shot{i}.json").write_text(json.dumps({**document, "imageHeight": 30 + i, "imageWidth": 40}))
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    capsys.readouterr()
    samples = train.samples + val.samples
    assert len(samples) == 10 and train.class_names == ["cat"]
    written = sorted(cache.glob("labelme-images/*"))
    assert len(written) == 9 and {p.suffix for p in written} == {".png", ".jpg"}
    for sample in samples:
        assert (Path(sample.path).parent == root) == (sample.image_id == "shot0")
        np.testing.assert_allclose(sample.boxes, [[2, 3, 12 + int(sample.image_id[4:]), 20]])
        np.testing.assert_array_equal(np.asarray(Image.open(sample.path).convert("RGB")), pixels[sample.image_id])
        if sample.image_id != "shot0":
            assert Path(sample.path).read_bytes() == encoded[sample.image_id]  # the embedded file's own bytes
    load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert sorted(cache.glob("labelme-images/*")) == written  # written once
    broken = json.loads((root / "shot3.json").read_text())
    (root / "shot3.json").write_text(json.dumps({**broken, "imageData": base64.b64encode(b"not an image").decode()}))
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert "1 unreadable image(s)" in capsys.readouterr().out
    (root / "shot5.json").write_text(json.dumps({**broken, "imageData": "@@ not base64 @@!"}))
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shot5.json: its imageData is not valid base64" in err
    assert not (tmp_path / "bad").exists()


def test_cityscapes_as_downloaded_gives_boxes_around_each_instances_visible_pixels(
    tmp_path, monkeypatch, capsys
) -> None:
    """leftImg8bit/ with gtFine/*_polygons.json: the eight instance classes, each box around the pixels the object
    keeps once the later polygons are drawn over it (a polygon of whole-pixel corners covers its edges, as PIL
    draws cityscapesscripts' instance masks); deleted objects and license plates hide nothing; a hidden object, a
    caravan and the stuff classes give no box; a cargroup is a crowd region of car. Boxes hand-computed. The boxes
    are kept in the cache: read back without drawing, drawn again for a file that changed."""
    from PIL import ImageDraw

    from tasks.data.detection_splits import load_detection_splits
    from tasks.data.public_sets import CITYSCAPES_INSTANCES

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cityscapes"

    def rect(x1: int, y1: int, x2: int, y2: int) -> list[list[int]]:
        return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]

    objects = [
        {"label": "road", "polygon": rect(0, 0, 79, 59)},
        {"label": "car", "polygon": rect(10, 10, 40, 30)},  # its right part behind the person
        {"label": "rider", "polygon": rect(60, 40, 70, 50)},  # all of it behind the building
        {"label": "caravan", "polygon": rect(0, 40, 8, 50)},
        {"label": "cargroup", "polygon": rect(45, 40, 58, 55)},
        {"label": "person", "polygon": rect(30, 5, 50, 35)},
        {"label": "license plate", "polygon": rect(12, 12, 16, 28)},  # not drawn: the car shows through
        {"label": "bicycle", "polygon": rect(20, 20, 30, 40), "deleted": 1},
        {"label": "building", "polygon": rect(59, 39, 71, 51)},
        {"label": "truck", "polygon": rect(-30, -20, -5, -2)},  # wholly outside the image
    ]
    for split in ("train", "val"):
        for k in range(2):
            name = f"aachen_{k:06d}_000019"
            (root / "leftImg8bit" / split / "aachen").mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / "aachen").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (80, 60), (k * 40, 90, 30)).save(
                root / "leftImg8bit" / split / "aachen" / f"{name}_leftImg8bit.png"
            )
            document = {"imgHeight": 60, "imgWidth": 80, "objects": objects}
            (root / "gtFine" / split / "aachen" / f"{name}_gtFine_polygons.json").write_text(json.dumps(document))
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert "2 <class>group region(s) are crowds" in capsys.readouterr().out
    assert train.class_names == list(CITYSCAPES_INSTANCES) and len(train.samples) == len(val.samples) == 2
    car, person = CITYSCAPES_INSTANCES.index("car") + 1, CITYSCAPES_INSTANCES.index("person") + 1
    for sample in train.samples + val.samples:
        assert sample.image_id.startswith("aachen/aachen_00000")
        np.testing.assert_array_equal(sample.boxes, [[10, 10, 30, 31], [45, 40, 59, 56], [30, 5, 51, 36]])
        assert sample.labels.tolist() == [car, car, person] and sample.crowd.tolist() == [False, True, False]
    drawn = []
    original = ImageDraw.Draw
    monkeypatch.setattr(ImageDraw, "Draw", lambda image: drawn.append(1) or original(image))
    again, _ = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert not drawn and [s.boxes.tolist() for s in again.samples] == [s.boxes.tolist() for s in train.samples]
    changed = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_polygons.json"
    changed.write_text(json.dumps({"objects": objects[:2]}))  # the road and the car, nothing in front of it
    again, _ = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert len(drawn) == 1 and again.samples[1].boxes.tolist() == [[10, 10, 41, 31]]
    assert again.samples[0].boxes.tolist() == train.samples[0].boxes.tolist()
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2
    (root / "gtFine" / "val" / "aachen" / "aachen_000001_000019_gtFine_polygons.json").unlink()
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aachen_000001_000019_gtFine_polygons.json of image" in err
    assert not (tmp_path / "bad").exists()


def test_bdd100k_as_downloaded_reads_its_ten_classes_with_bdd100ks_own_renames_and_crowds(tmp_path, capsys) -> None:
    """images/100k/<split>/ with labels/det_20/det_train.json (the 2020 release) and the 2018 release's
    labels/bdd100k_labels_images_val.json: the ten classes in det.toml's order; 2018 names renamed; other person,
    other vehicle, trailer and crowd-attributed boxes kept as crowd regions of their classes; labels without a
    box2d (drivable areas) not objects; a frame without labels has none; a missing image skipped and counted."""
    from tasks.data.bdd100k import CLASSES
    from tasks.data.detection_splits import load_detection_splits

    root = tmp_path / "bdd100k"
    (root / "labels" / "det_20").mkdir(parents=True)

    def box(x1: float, y1: float, x2: float, y2: float) -> dict[str, float]:
        return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}

    expected = {}
    for split, count in (("train", 6), ("val", 2)):
        (root / "images" / "100k" / split).mkdir(parents=True)
        frames = []
        for i in range(count):
            name = f"{split}-{i:04d}.jpg"
            Image.new("RGB", (128, 72), (i * 30, 60, 90)).save(root / "images" / "100k" / split / name)
            labels = [
                {"id": "1", "category": "car", "box2d": box(10 + i, 20, 40 + i, 50.5), "attributes": {"crowd": False}},
                {"id": "2", "category": "person" if split == "val" else "pedestrian", "box2d": box(50, 10, 60, 40)},
                {"id": "3", "category": "other vehicle", "box2d": box(70, 30, 90, 45)},
                {"id": "4", "category": "traffic sign", "box2d": box(100, 5, 110, 15), "attributes": {"crowd": True}},
                {"id": "5", "category": "drivable area", "poly2d": [{"vertices": [[0, 60], [127, 60], [64, 40]]}]},
                {"id": "6", "category": "bike", "box2d": box(5, 40, 25, 70)},
            ]
            frames.append({"name": name, "attributes": {"weather": "clear"}, "labels": labels if i else None})
            if i:
                boxes = [[10 + i, 20, 40 + i, 50.5], [50, 10, 60, 40], [70, 30, 90, 45], [100, 5, 110, 15]]
                expected[f"{split}-{i:04d}"] = (
                    [*boxes, [5, 40, 25, 70]],
                    [3, 1, 3, 10, 8],
                    [False, False, True, True, False],
                )
            else:
                expected[f"{split}-{i:04d}"] = ([], [], [])
        frames.append({"name": f"{split}-gone.jpg", "labels": []})  # listed, but its image is missing
        target = "det_20/det_train.json" if split == "train" else "bdd100k_labels_images_val.json"
        (root / "labels" / target).write_text(json.dumps(frames))
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    printed = capsys.readouterr().out
    assert "10 crowd or other-class box(es)" in printed and "2 crowd or other-class box(es)" in printed
    assert train.class_names == list(CLASSES) and len(train.samples) == 6 and len(val.samples) == 2
    assert train.fixes.unreadable == val.fixes.unreadable == 1
    for sample in train.samples + val.samples:
        boxes, labels, crowd = expected[sample.image_id]
        np.testing.assert_allclose(sample.boxes, np.array(boxes, np.float32).reshape(-1, 4))
        assert sample.labels.tolist() == labels and sample.crowd.tolist() == crowd
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2
    frames = json.loads((root / "labels" / "det_20" / "det_train.json").read_text())
    frames[2]["labels"][0]["category"] = "tram"
    (root / "labels" / "det_20" / "det_train.json").write_text(json.dumps(frames))
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "det_train.json, frame train-0002.jpg: category 'tram' is none of" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "case", ["bdd-not-list", "bdd-no-name", "bdd-box", "cityscapes-json", "cityscapes-objects", "cityscapes-polygon"]
)
def test_a_broken_bdd100k_or_cityscapes_label_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys, case) -> None:
    """Each malformed label file of BDD100K's and Cityscapes' layouts stops the run with exit 2 and one line naming
    the file."""
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    if case.startswith("bdd"):
        root = tmp_path / "bdd100k"
        (root / "labels" / "det_20").mkdir(parents=True)
        for split in ("train", "val"):
            (root / "images" / "100k" / split).mkdir(parents=True)
            Image.new("RGB", (64, 48)).save(root / "images" / "100k" / split / "a.jpg")
            label = {"category": "car", "box2d": {"x1": 1, "y1": 2, "x2": 30, "y2": 40}}
            (root / "labels" / "det_20" / f"det_{split}.json").write_text(
                json.dumps([{"name": "a.jpg", "labels": [label]}])
            )
        broken = root / "labels" / "det_20" / "det_train.json"
        text = {
            "bdd-not-list": json.dumps({"name": "a.jpg"}),
            "bdd-no-name": json.dumps([{"labels": []}]),
            "bdd-box": json.dumps([{"name": "a.jpg", "labels": [{"category": "car", "box2d": {"x1": "left"}}]}]),
        }[case]
    else:
        root = tmp_path / "cityscapes"
        for split in ("train", "val"):
            (root / "leftImg8bit" / split / "ulm").mkdir(parents=True)
            (root / "gtFine" / split / "ulm").mkdir(parents=True)
            Image.new("RGB", (64, 48)).save(root / "leftImg8bit" / split / "ulm" / "ulm_000000_000019_leftImg8bit.png")
            polygon = [[2, 2], [30, 2], [30, 30]]
            document = {"imgHeight": 48, "imgWidth": 64, "objects": [{"label": "car", "polygon": polygon}]}
            (root / "gtFine" / split / "ulm" / "ulm_000000_000019_gtFine_polygons.json").write_text(
                json.dumps(document)
            )
        broken = root / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_polygons.json"
        text = {
            "cityscapes-json": "{not json",
            "cityscapes-objects": json.dumps({"objects": {"car": 1}}),
            "cityscapes-polygon": json.dumps({"objects": [{"label": "car", "polygon": [[1, 2, 3]]}]}),
        }[case]
    broken.write_text(text)
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(broken) in err, err
    assert not out.exists()


def test_wider_face_as_downloaded_reads_as_torchvisions_widerface_reads_it(tmp_path, capsys) -> None:
    """WIDER_<split>/images/ with wider_face_split/wider_face_<split>_bbx_gt.txt: the same images and boxes (x y w h
    to corners) as torchvision.datasets.WIDERFace on the same files, an image without faces (a count of 0 and its
    line of zeros) with none, invalid faces as crowd regions; a zero-width face dropped and counted; trained end to
    end; a face line of 9 numbers is one line with exit 2."""
    from torchvision.datasets import WIDERFace

    from tasks.data.detection_splits import load_detection_splits

    root = tmp_path / "widerface"
    for folder in ("WIDER_test", "wider_face_split"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 4), ("val", 2)):
        lines = []
        for i in range(count):
            name = f"0--Parade/0_Parade_marchingband_1_{i}.jpg"
            (root / f"WIDER_{split}" / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (i * 40, 10, 10)).save(root / f"WIDER_{split}" / "images" / name)
            faces = [] if i == 1 else [[5 + i, 6, 10, 12, 0, 0, 0, 0, 0, 0], [30, 20, 8, 9, 1, 0, 0, i % 2, 1, 0]]
            if i == 2:
                faces.append([40, 30, 0, 5, 0, 0, 0, 0, 0, 0])  # no width
            lines += [name, str(len(faces))]
            lines += [" ".join(map(str, f)) for f in faces] or ["0 0 0 0 0 0 0 0 0 0"]
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert "1 face(s) flagged invalid" in capsys.readouterr().out and train.fixes.dropped == 1
    for data, split in ((train, "train"), (val, "val")):
        reference = WIDERFace(str(tmp_path), split=split)  # it adds its folder name, widerface
        assert data.class_names == ["face"] and len(data.samples) == len(reference)
        for sample, info in zip(data.samples, reference.img_info):
            assert str(sample.path) == info["img_path"]
            x, y, w, h = info["annotations"]["bbox"].numpy().astype(np.float32).T
            valid = (w > 0) & (h > 0)
            expected = np.stack([x, y, x + w, y + h], axis=1)[valid]
            np.testing.assert_array_equal(sample.boxes, expected)
            # the 8th number is "invalid" in WIDER FACE's readme (x y w h blur expression illumination invalid
            # occlusion pose); torchvision files that column under "occlusion"
            flagged = info["annotations"]["occlusion"].numpy()[valid] == 1
            assert sample.crowd.tolist() == flagged.tolist()
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2
    listing = root / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    listing.write_text(listing.read_text().replace("30 20 8 9 1 0 0 0 1 0", "30 20 8 9 1 0 0 0 1"))
    assert main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wider_face_val_bbx_gt.txt, line 4: expected 10 numbers" in err
    assert not (tmp_path / "bad").exists()
