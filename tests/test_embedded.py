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
    assert config["model"]["min_size"] == 128 and config["train"]["lr"] == 0.01  # the packaged recipe
    root = shapes_dataset(tmp_path / "cache")
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 80
    assert len(json.loads((root / "annotations" / "instances_train.json").read_text())["images"]) == 320
