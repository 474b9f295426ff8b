"""The built-in default data: made once, deterministic, and used with its own recipe when --data is omitted."""

from __future__ import annotations

import json

import numpy as np
import yaml

from tasks.classify import main
from tasks.data.embedded import digits_imagefolder


def test_digits_imagefolder_is_built_once_and_split_deterministically(tmp_path) -> None:
    from sklearn.datasets import load_digits

    root = digits_imagefolder(tmp_path)
    per_class = np.bincount(load_digits().target)
    expected_val = int((per_class // 5).sum())
    counts = {split: len(list((root / split).rglob("*.png"))) for split in ("train", "val")}
    assert counts == {"train": int(per_class.sum()) - expected_val, "val": expected_val}
    assert sorted(p.name for p in (root / "val").iterdir()) == [str(d) for d in range(10)]
    stamp = (root / "val" / "3" / next(iter(sorted(p.name for p in (root / "val" / "3").iterdir())))).stat().st_mtime
    assert digits_imagefolder(tmp_path) == root
    first = root / "val" / "3" / sorted(p.name for p in (root / "val" / "3").iterdir())[0]
    assert first.stat().st_mtime == stamp  # not rewritten


def test_no_data_uses_the_digits_and_their_recipe(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--backbone", "resnet18", "--epochs", "1", "--workers", "0", "--output", str(out)]
    assert main([*args, "--set", "train.max_iters_per_epoch=2"]) == 0
    assert "built-in handwritten digits" in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["image_size"] == 32 and config["data"]["hflip"] == 0.0  # the packaged recipe
    assert config["train"]["epochs"] == 1  # ... under the user's flags
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 355 and "top5" in metrics  # every fifth digit of each class


def test_detect_without_data_uses_the_shapes_and_their_recipe(tmp_path, monkeypatch, capsys) -> None:
    from tasks.data.embedded import shapes_dataset
    from tasks.detect import main as detect_main

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--backbone", "resnet18", "--epochs", "1", "--workers", "0", "--output", str(out)]
    assert detect_main([*args, "--set", "train.max_iters_per_epoch=2"]) == 0
    assert "built-in shapes dataset" in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    train = config["train"]  # the packaged recipe
    assert config["model"]["min_size"] == 128 and (train["batch_size"], train["lr"]) == (8, 0.02)
    root = shapes_dataset(tmp_path / "cache")
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 80
    assert len(json.loads((root / "annotations" / "instances_train.json").read_text())["images"]) == 320


def test_shapes_carry_masks_and_image_labels_that_agree_with_the_boxes(tmp_path) -> None:
    from PIL import Image

    from tasks.data.embedded import SHAPES, shapes_dataset

    root = shapes_dataset(tmp_path, size=64, train_images=5, val_images=2)
    document = json.loads((root / "annotations" / "instances_train.json").read_text())
    rows = dict(line.split(",") for line in (root / "train.csv").read_text().splitlines()[1:])
    assert (root / "classes.txt").read_text().split() == ["background", *SHAPES]
    for image in document["images"]:
        mask = np.asarray(Image.open(root / "masks" / "train" / image["file_name"]))
        boxes = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        for a in boxes:  # the middle of each box carries its class in the mask (little overlap by construction)
            x, y, w, h = a["bbox"]
            assert mask[int(y + h * 0.7), int(x + w / 2)] == a["category_id"]
        largest = max(boxes, key=lambda a: a["area"])
        assert rows[f"train/{image['file_name']}"] == SHAPES[largest["category_id"] - 1]


def test_segment_and_multitask_without_data_use_the_shapes_and_their_recipes(tmp_path, monkeypatch, capsys) -> None:
    from tasks.multitask import main as multitask_main
    from tasks.segment import main as segment_main

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    fast = ["--backbone", "resnet18", "--epochs", "1", "--workers", "0", "--set", "train.max_iters_per_epoch=2"]
    assert segment_main([*fast, "--output", str(tmp_path / "seg")]) == 0
    assert "built-in shapes dataset" in capsys.readouterr().out
    config = yaml.safe_load((tmp_path / "seg" / "config.yaml").read_text())
    assert config["data"]["crop_size"] == 128 and config["train"]["optimizer"] == "adamw"  # the packaged recipe
    metrics = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert metrics["num_pixels"] == 80 * 128 * 128 and list(metrics["per_class_iou"])[1:] == [
        "square",
        "circle",
        "triangle",
    ]
    assert multitask_main([*fast, "--output", str(tmp_path / "mt")]) == 0
    metrics = json.loads((tmp_path / "mt" / "metrics.json").read_text())
    assert set(metrics) == {"classify", "detect", "segment", "main"}
    assert metrics["classify"]["num_samples"] == 80 and metrics["detect"]["num_images"] == 80
