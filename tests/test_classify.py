"""tasks.classify end to end on generated images: outputs, eval, predict, resume and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from tasks.classify import build_model, main
from tasks.engine import seed_everything

FAST = ["--backbone", "resnet18", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--lr", "0.02"]
METRIC_KEYS = {
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "per_class",
    "confusion_matrix",
    "num_samples",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(data), "--epochs", "3", "--output", str(out), *FAST]) == 0
    return out


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_train_writes_the_run_folder(trained) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "last.pt", "best.pt", "metrics.json", "confusion_matrix.png"} <= names
    assert {"confusion_matrix_normalized.png", "results.csv", "results.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS  # 3 classes: no top5
    for key in METRIC_KEYS - {"per_class", "confusion_matrix", "num_samples"}:
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_samples"] == 12 and sum(map(sum, metrics["confusion_matrix"])) == 12
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert metrics["accuracy"] >= 2 / 3  # colours are easy; chance is 1/3
    checkpoint = torch.load(trained / "last.pt", weights_only=True)
    assert checkpoint["task"] == "classify" and checkpoint["epoch"] == 2
    assert {"optimizer", "scheduler", "scaler", "config", "model_args"} <= set(checkpoint)


def test_eval_of_last_checkpoint_reproduces_training_metrics(trained, data, tmp_path) -> None:
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "last.pt"),
                "--data",
                str(data),
                "--output",
                str(out),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text()) == json.loads((trained / "metrics.json").read_text())
    assert (out / "confusion_matrix.png").stat().st_size > 0


def test_predict_prints_and_writes_top_classes(trained, data, tmp_path, capsys) -> None:
    out = tmp_path / "pred"
    image = data / "val" / "red" / "0.png"
    assert (
        main(
            [  # options between, before and after the images: any order parses
                "predict",
                "--checkpoint",
                str(trained / "best.pt"),
                str(image),
                "--output",
                str(out),
                str(data / "val" / "blue"),
            ]
        )
        == 0
    )
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 5 and results[0]["path"] == str(image)
    for result in results:
        probabilities = [r["probability"] for r in result["top5"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert f"{image}: " in capsys.readouterr().out


def test_eval_scores_a_predictions_file_with_no_model_as_scikit_learn_scores_it(
    trained, data, tmp_path, capsys
) -> None:
    """``eval --predictions``: predict's predictions.json of the val split, or the same as a ``path,label`` CSV
    (paths relative to it, as label files are), scores as scikit-learn scores the top classes. Predictions of
    other images are left out; a class the split lacks joins the class list. An image with no prediction or with
    two, and a file of the wrong shape, are one line naming the file; nothing is written."""
    import os

    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    predicted = tmp_path / "pred"
    assert (
        main(["predict", "--checkpoint", str(trained / "best.pt"), str(data / "val"), "--output", str(predicted)]) == 0
    )
    entries = json.loads((predicted / "predictions.json").read_text())
    truth = [Path(e["path"]).parent.name for e in entries]
    guess = [e["top5"][0]["class"] for e in entries]
    outside = tmp_path / "elsewhere.png"
    shutil.copy(data / "val" / "red" / "0.png", outside)
    entries.append({"path": str(outside), "top5": [{"class": "purple", "probability": 1.0}]})
    given = tmp_path / "predictions.json"
    given.write_text(json.dumps(entries))
    capsys.readouterr()
    argv = ["eval", "--data", str(data), "--workers", "0"]
    assert main([*argv, "--predictions", str(given), "--output", str(tmp_path / "scored")]) == 0
    assert "1 prediction(s)" in capsys.readouterr().out  # the image outside the split
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    names = list(metrics["per_class"])
    assert sorted(names) == sorted(set(truth))
    precision, recall, f1, _ = precision_recall_fscore_support(truth, guess, labels=names, zero_division=0)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, guess), abs=1e-12)
    assert metrics["precision_macro"] == pytest.approx(precision.mean(), abs=1e-12)
    assert metrics["recall_macro"] == pytest.approx(recall.mean(), abs=1e-12)
    assert metrics["f1_macro"] == pytest.approx(f1.mean(), abs=1e-12)

    table = tmp_path / "table" / "predictions.csv"
    table.parent.mkdir()
    rows = [f"{os.path.relpath(e['path'], table.parent)},{e['top5'][0]['class']}" for e in entries[:-1]]
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert main([*argv, "--predictions", str(table), "--output", str(tmp_path / "from-csv")]) == 0
    assert json.loads((tmp_path / "from-csv" / "metrics.json").read_text()) == metrics

    table.write_text("path,label\n" + "\n".join([rows[0].rsplit(",", 1)[0] + ",purple", *rows[1:]]) + "\n")
    assert main([*argv, "--predictions", str(table), "--output", str(tmp_path / "purple")]) == 0
    purple = json.loads((tmp_path / "purple" / "metrics.json").read_text())
    assert list(purple["per_class"])[-1] == "purple" and purple["per_class"]["purple"]["precision"] == 0.0

    def fails(text: str, *needles: str) -> None:
        table.write_text(text)
        rc = main([*argv, "--predictions", str(table), "--output", str(tmp_path / "bad")])
        _one_line_error(capsys, rc, str(table), *needles)
        assert not (tmp_path / "bad").exists()

    fails("\n".join(rows[1:]) + "\n", f"predicts {len(rows) - 1} of the split's {len(rows)}")
    fails("\n".join([*rows, rows[0]]) + "\n", "predicted twice")
    fails("\n".join([rows[0].split(",")[0], *rows[1:]]) + "\n", "line 1", "expected 'path,label'")
    given.write_text(json.dumps({"path": "x"}))
    _one_line_error(capsys, main([*argv, "--predictions", str(given)]), str(given), "must be a list")
    _one_line_error(capsys, main([*argv, "--predictions", str(tmp_path / "none.json")]), "does not exist")


def test_a_predictions_files_top5_is_scikit_learns_top_k_accuracy(tmp_path) -> None:
    """Over 6 classes, predict's ranked classes give top-5 as scikit-learn's ``top_k_accuracy_score`` of scores in
    that order; a CSV, one class a row, gives none."""
    from sklearn.metrics import top_k_accuracy_score

    from tasks.classify import score_predictions
    from tasks.data.folders import Sample

    names = ["a", "b", "c", "d", "e", "f"]
    generator = torch.Generator().manual_seed(0)
    samples = [Sample(tmp_path / f"{i}.png", int(torch.randint(6, (1,), generator=generator))) for i in range(40)]
    orders = [torch.randperm(6, generator=generator).tolist() for _ in samples]
    entries = [
        {"path": str(s.path), "top5": [{"class": names[k], "probability": 0.1} for k in order[:5]]}
        for s, order in zip(samples, orders)
    ]
    given = tmp_path / "predictions.json"
    given.write_text(json.dumps(entries))
    metrics, _ = score_predictions(given, samples, names)
    scores = torch.zeros(len(samples), 6)
    for row, order in enumerate(orders):
        scores[row, order] = torch.arange(6, 0, -1, dtype=torch.float32)  # the first ranked highest
    truth = [s.label for s in samples]
    assert metrics["top5"] == pytest.approx(top_k_accuracy_score(truth, scores.numpy(), k=5, labels=range(6)))
    assert metrics["accuracy"] == pytest.approx(top_k_accuracy_score(truth, scores.numpy(), k=1, labels=range(6)))
    assert 0 < metrics["accuracy"] < metrics["top5"] < 1
    table = tmp_path / "predictions.csv"
    table.write_text("".join(f"{s.name},{names[o[0]]}\n" for s, o in zip((x.path for x in samples), orders)))
    assert "top5" not in score_predictions(table, samples, names)[0]


def test_resume_continues_after_the_saved_epoch(data, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--data", str(data), "--epochs", "1", "--output", str(out), *FAST]) == 0
    assert (
        main(["--data", str(data), "--epochs", "2", "--output", str(out), "--resume", str(out / "last.pt"), *FAST]) == 0
    )
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def test_resume_with_another_model_names_the_options_that_differ(data, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--data", str(data), "--epochs", "1", "--output", str(out), *FAST]) == 0
    capsys.readouterr()
    args = ["--data", str(data), "--epochs", "2", "--output", str(out), "--resume", str(out / "last.pt")]
    rc = main([*args, *FAST, "--backbone", "resnet34"])  # later flags win
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert err == (
        f"error: checkpoint {out / 'last.pt'} does not fit this model: it was trained with other model options "
        "(backbone 'resnet18' there, 'resnet34' here); resume with the same ones"
    )
    rc = main(["eval", "--checkpoint", str(out), "--data", str(data)])  # the run folder, not its checkpoint
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (
        f"error: checkpoint {out} is a folder: name the checkpoint in it ({out / 'best.pt'} or {out / 'last.pt'})"
    )


def test_resume_goes_on_with_the_recipe_the_run_resolved(data, tmp_path, capsys, monkeypatch) -> None:
    """--resume with nothing else: every auto choice (epochs fitted to --time, warmup, augmentation, size, rate)
    is the checkpoint's, shown as the resumed run's, and no step is measured again."""
    from tasks import recipes
    from tasks.config import load_yaml

    out = tmp_path / "run"
    common = ["--data", str(data), "--output", str(out), "--backbone", "resnet18", "--batch-size", "8"]
    assert main([*common, "--workers", "0", "--time", "3s"]) == 0
    first = torch.load(out / "last.pt", weights_only=True)["config"]

    def refuse(*args, **kwargs):
        raise AssertionError("the resumed run measured a training step again")

    monkeypatch.setattr(recipes, "measure_step", refuse)
    capsys.readouterr()
    assert main([*common, "--workers", "0", "--resume", str(out / "last.pt")]) == 0
    printed = capsys.readouterr().out
    second = load_yaml(out / "config.yaml")  # this run's config.yaml; the first run's is in its checkpoint
    keys = [("train", k) for k in ("epochs", "warmup_epochs", "time", "lr", "optimizer", "weight_decay")]
    keys += [("data", k) for k in ("image_size", "crop_pct", "scale_min", "color_jitter")]
    for section, key in keys:
        assert second[section][key] == first[section][key], (section, key)
    assert first["train"]["time"] == "3s"
    assert "the resumed run's, within --time 3s" in printed
    assert sum("the resumed run's" in line for line in printed.splitlines()) >= len(keys) - 1


@pytest.mark.parametrize("workers", ["0", "2"])
def test_seeded_runs_are_reproducible(data, tmp_path, workers: str) -> None:
    states = []
    for name in ("a", "b"):
        args = ["--data", str(data), "--epochs", "1", "--output", str(tmp_path / name), *FAST, "--workers", workers]
        assert main(args) == 0
        states.append(torch.load(tmp_path / name / "last.pt", weights_only=True)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_linear_probe_trains_the_head_only(data, tmp_path) -> None:
    out = tmp_path / "probe"
    assert main(["--data", str(data), "--epochs", "1", "--output", str(out), "--freeze-backbone", *FAST]) == 0
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    seed_everything(0)
    initial = build_model("resnet18", 3, freeze_backbone=True).state_dict()
    backbone_keys = [k for k in initial if k.startswith("backbone.")]
    assert all(torch.equal(trained[k], initial[k]) for k in backbone_keys)  # BN statistics included
    assert not torch.equal(trained["head.fc.weight"], initial["head.fc.weight"])


def test_engine_options_ema_amp_accumulation_clipping(data, tmp_path) -> None:
    out = tmp_path / "opts"
    args = [
        "--data",
        str(data),
        "--epochs",
        "1",
        "--output",
        str(out),
        "--amp",
        *FAST,
        "--set",
        "train.ema=true",
        "--set",
        "train.accumulate=2",
        "--set",
        "train.clip_grad=1.0",
        "--set",
        "train.optimizer=adamw",
        "--lr",
        "0.001",
    ]
    assert main(args) == 0
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["ema"] is not None
    assert not torch.equal(checkpoint["ema"]["head.fc.weight"], checkpoint["model"]["head.fc.weight"])


def test_csv_layout(data, tmp_path) -> None:
    for split in ("train", "val"):
        rows = ["path,label"] + [
            f"{p.relative_to(tmp_path.parent) if False else p},{p.parent.name}"
            for p in sorted((data / split).rglob("*.png"))
        ]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "csvrun"
    assert main(["--data", str(tmp_path), "--format", "csv", "--epochs", "1", "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 12


@pytest.mark.parametrize("stand_in", ["valid", "test"])
def test_a_valid_or_test_folder_stands_in_for_a_missing_val(data, tmp_path, capsys, stand_in) -> None:
    """Roboflow's folder export has train/, valid/ and test/; Ultralytics' classification sets often train/ and
    test/ only."""
    root = tmp_path / "exported"
    shutil.copytree(data / "train", root / "train")
    shutil.copytree(data / "val", root / stand_in)
    out = tmp_path / "run"
    assert main(["--data", str(root), "--epochs", "1", "--output", str(out), *FAST]) == 0
    assert f"has no 'val' split: evaluating on its '{stand_in}' split" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 12
    shutil.rmtree(root / stand_in)  # then a fifth of each class of train/ is held out
    out = tmp_path / "held"
    assert main(["--data", str(root), "--epochs", "1", "--output", str(out), *FAST]) == 0
    assert "holding out 20% of each class for validation (15 of 72 images" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 15


@pytest.mark.parametrize(("train", "val"), [("training", "validation"), ("train2017", "val2017")])
def test_a_split_under_its_other_name_is_read_not_held_out_of(data, tmp_path, capsys, train, val) -> None:
    """training/ and validation/ (many Kaggle sets), train2017/ and val2017/ (COCO's naming) are the train and val
    splits: read as they are, with no hold-out."""
    from tasks.data.folders import load_split

    root = tmp_path / "named"
    shutil.copytree(data / "train", root / train)
    shutil.copytree(data / "val", root / val)
    for split, folder in (("train", train), ("val", val)):
        samples, names = load_split(root, split, fmt="auto", classes=None)
        assert names == ["blue", "green", "red"]
        assert {s.path for s in samples} == set((root / folder).rglob("*.png"))
    assert "holding out" not in capsys.readouterr().out


def test_a_root_of_class_folders_holds_out_each_classs_share_by_the_hash_of_its_paths(data, tmp_path, capsys) -> None:
    """An ImageFolder without splits (Kaggle's downloads): data.val_fraction of each class is held out, the files
    of the smallest SHA-1 of their path under the root; eval of the checkpoint scores the same files again."""
    import hashlib

    from tasks.data.folders import load_split

    root = tmp_path / "unsplit"
    for split in ("train", "val"):
        for image in sorted((data / split).rglob("*.png")):
            target = root / image.parent.name / f"{split}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)  # 28 images a class
    out = tmp_path / "run"
    argv = ["--data", str(root), "--epochs", "1", "--output", str(out), "--set", "data.val_fraction=0.25", *FAST]
    assert main(argv) == 0
    assert "holding out 25% of each class for validation (21 of 84 images" in capsys.readouterr().out
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["num_samples"] == 21
    train, names = load_split(root, "train", fmt="auto", classes=None, val_fraction=0.25)
    val, _ = load_split(root, "val", fmt="auto", classes=None, val_fraction=0.25)
    assert names == ["blue", "green", "red"] and len(train) == 63
    for label, name in enumerate(names):
        files = sorted((root / name).iterdir(), key=lambda p: hashlib.sha1(f"{name}/{p.name}".encode()).hexdigest())
        assert {s.path for s in val if s.label == label} == set(files[:7])
        assert {s.path for s in train if s.label == label} == set(files[7:])
    evaluated = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(root), "--output", str(evaluated)]
    assert main([*argv, "--image-size", "32"]) == 0  # the checkpoint's 0.25, not the default 0.2
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["num_samples"] == 21 and again["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)

    (root / "red").rename(root / "Train")  # a split named in another case is no class: the old error stands
    rc = main(["--data", str(root), "--epochs", "1", "--output", str(tmp_path / "none"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and f"--data {root} has no 'train' split" in err, err
    from tasks.data.holdout import held_out
    from tasks.errors import UserError

    with pytest.raises(UserError, match=r"data.val_fraction=1.0: the share held out for validation must be in"):
        held_out(["a", "b"], 1.0)


@pytest.mark.parametrize(
    "line, problem",
    [("a.png,", "the path or the label is empty"), (" ,red", "the path or the label is empty"), ("a.png", "expected")],
)
def test_a_csv_line_without_a_path_or_a_label_is_named(tmp_path, line, problem) -> None:
    """An empty label was read as a class named '' (three classes from two)."""
    from tasks.data.folders import read_label_csv
    from tasks.errors import UserError

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "train.csv").write_text(f"path,label\na.png,red\n{line}\n")
    with pytest.raises(UserError) as caught:
        read_label_csv(tmp_path / "train.csv")
    assert str(caught.value).startswith(f"label file {tmp_path / 'train.csv'}, line 3: {problem}")


@pytest.mark.parametrize(
    "backbone", ["timm:convnext_atto", "timm:vit_tiny_patch16_224", "timm:vit_small_patch14_dinov2"]
)
def test_timm_backbones_train_evaluate_and_export(data, tmp_path, backbone, capsys) -> None:
    """The runner gave every timm model the ResNets' ``norm`` option (a TypeError), and a ViT asserted its input
    was 224 px; both train from the command line now, and eval reads the checkpoint back. Both export to ONNX, a
    ViT too (its antialiased resize of the position embedding had no ONNX form at opset 17), checked against the
    eager model on two input sizes. DINOv2's patch 14 divides neither 32 nor the check's 64 x 48: it trained only
    once the input was padded, and its graph pads by the traced sizes (timm's own padding kept the example's)."""
    out = tmp_path / "run"
    args = [*FAST, "--backbone", backbone, "--epochs", "1", "--set", "train.max_iters_per_epoch=1"]  # later wins
    assert main(["--data", str(data), "--output", str(out), *args]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert (
        main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(data), "--output", str(tmp_path / "e")]) == 0
    )
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["accuracy"] == trained["accuracy"]
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(out / "best.pt"), "--output", str(tmp_path / "m.onnx")]) == 0
    assert "onnxruntime matches eager within" in capsys.readouterr().out


@pytest.mark.parametrize("backbone", ["timm:convnext_atto", "timm:vit_tiny_patch16_224"])
def test_a_timm_classifier_reads_the_models_own_map_and_trains_every_parameter(backbone) -> None:
    """A ViT's classifier averages its normed patch tokens (timm's ``forward_features``), its own stride-16 map.
    It read the pyramid's max-pooled c5 and built the pyramid's upsampling layers beside it, which got no gradient:
    DistributedDataParallel stopped with "Expected to have finished reduction" under torchrun."""
    import timm

    torch.manual_seed(0)
    model = build_model(backbone, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 96)
    model(x).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    if "vit" in backbone:
        assert model.head.level == "c4" and [i.name for i in model.backbone.feature_info] == ["c4"]
        reference = timm.create_model(backbone[5:], dynamic_img_size=True).eval()
        reference.load_state_dict(model.backbone.model.model.state_dict(), strict=False)  # its head stays unused
        with torch.no_grad():
            tokens = reference.forward_features(x)[:, reference.num_prefix_tokens :]
            torch.testing.assert_close(model(x), model.head.fc(tokens.mean(1)), rtol=0, atol=1e-5)


def test_a_batch_of_one_that_batchnorm_cannot_train_on_is_one_line(data, tmp_path, capsys) -> None:
    """At 32 px a ResNet's c5 is 1×1, so a batch of one image leaves BatchNorm one value per channel: torch's
    ValueError came out as a traceback."""
    args = ["--data", str(data), "--epochs", "1", "--output", str(tmp_path / "run"), *FAST, "--batch-size", "1"]
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (
        "error: a training batch of 1 image(s) leaves a BatchNorm layer one value per channel at this input size: "
        "use --batch-size 2 or more (now 1) or a larger --image-size"
    )


def test_auto_format_reads_loose_images_beside_a_csv_as_the_csv_layout(tmp_path) -> None:
    """The shapes layout (train/*.png, train.csv, masks/, annotations/) serves classify through --data alone."""
    from tasks.data.folders import find_split

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "0001.png").write_bytes(b"")
    assert find_split(tmp_path, "train") == (tmp_path / "train", "folder")  # no CSV: the folder (and its error)
    (tmp_path / "train.csv").write_text("path,label\ntrain/0001.png,a\n")
    assert find_split(tmp_path, "train") == (tmp_path / "train.csv", "csv")
    assert find_split(tmp_path, "train", fmt="folder") == (tmp_path / "train", "folder")  # as asked
    (tmp_path / "train" / "cat").mkdir()
    assert find_split(tmp_path, "train") == (tmp_path / "train", "folder")  # class folders win


def test_a_one_image_split_and_an_accumulation_longer_than_an_epoch_are_one_line_errors(data, tmp_path, capsys) -> None:
    single = make_image_folder(tmp_path / "one", classes=("red",), per_class=(1, 1))
    rc = main(["--data", str(single), "--epochs", "1", "--output", str(tmp_path / "a"), *FAST])
    _one_line_error(capsys, rc, "training split has 1 image(s)", "at least 2")
    args = ["--data", str(data), "--epochs", "1", "--output", str(tmp_path / "b"), *FAST]
    rc = main([*args, "--set", "train.accumulate=10"])  # 72 images at batch 8: 9 batches an epoch
    _one_line_error(capsys, rc, "train.accumulate 10", "9 batch(es)", "never step")


def test_corrupt_image_is_skipped_and_counted(data, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (copy / "val" / "blue" / "empty.png").write_bytes(b"")
    assert main(["--data", str(copy), "--epochs", "2", "--output", str(tmp_path / "r"), *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("skipping unreadable image") == 2  # each file named once, not once an epoch
    assert "broken.png" in captured.err and "empty.png" in captured.err
    assert "skipped 1 unreadable image(s) in epoch 1 (said again if that changes)" in captured.out
    assert "unreadable image(s) in epoch 2" not in captured.out  # the same count: not repeated
    # the val split's 12 readable images are scored, and the skip is said once (the count did not change)
    assert captured.out.count("skipped 1 unreadable validation image(s); the metrics are over the 12 read") == 1
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["num_samples"] == 12


# ---- bad input: one line, exit code 2, nothing lost ----


def test_missing_data_path(tmp_path, capsys) -> None:
    rc = main(["--data", str(tmp_path / "nowhere"), *FAST])
    _one_line_error(capsys, rc, "nowhere", "does not exist")


def test_unknown_backbone(data, capsys) -> None:
    rc = main(["--data", str(data), "--backbone", "resnet51"])
    _one_line_error(capsys, rc, "unknown backbone 'resnet51'", "resnet50")


def test_yaml_syntax_error_and_key_typo(data, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 2\n")
    _one_line_error(capsys, main(["--data", str(data), "--config", str(bad)]), "bad.yaml", "YAML syntax error")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 2\n")
    _one_line_error(capsys, main(["--data", str(data), "--config", str(typo)]), "typo.yaml", "'train.epoch'")
    _one_line_error(capsys, main(["--data", str(data), "--epochs", "two"]), "--epochs", "two")


def test_empty_class_folder(data, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "train" / "purple").mkdir()
    _one_line_error(capsys, main(["--data", str(copy), *FAST]), "purple", "holds no images")


def test_checkpoint_of_another_task(trained, data, tmp_path, capsys) -> None:
    foreign = torch.load(trained / "best.pt", weights_only=True)
    foreign["task"] = "detect"
    torch.save(foreign, tmp_path / "det.pt")
    rc = main(["eval", "--checkpoint", str(tmp_path / "det.pt"), "--data", str(data), "--workers", "0"])
    _one_line_error(capsys, rc, "det.pt", "'detect' model")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rc = main(["eval", "--checkpoint", str(tmp_path / "junk.pt"), "--data", str(data)])
    _one_line_error(capsys, rc, "junk.pt", "cannot be read")


def test_checkpoint_with_another_class_count(trained, tmp_path, capsys) -> None:
    two = make_image_folder(tmp_path / "two", classes=("red", "gray"), per_class=(2, 2))
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(trained / "best.pt"),
            "--data",
            str(two),
            "--output",
            str(trained),
            "--workers",
            "0",
        ]
    )
    _one_line_error(capsys, rc, "best.pt", "3 classes", "gray")  # a class the model does not know
    assert json.loads((trained / "metrics.json").read_text())["num_samples"] == 12  # nothing lost


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda c: c.update(format_version=99), ("format version 99", "reads format 1")),
        (lambda c: c["model_args"].update(wings=2), ("model arguments", "wings")),
        (lambda c: c["model_args"].pop("backbone"), ("model arguments", "backbone")),
        (lambda c: c.pop("class_names"), ("has no class_names",)),
        (lambda c: c.update(model_args=[1, 2]), ("malformed",)),
    ],
)
def test_checkpoints_of_other_versions_are_one_line_errors(trained, data, tmp_path, capsys, change, needles) -> None:
    checkpoint = torch.load(trained / "best.pt", weights_only=True)
    assert checkpoint["format_version"] == 1  # what this version writes
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "other.pt")
    for command in (["eval", "--data", str(data)], ["predict", str(data / "val" / "red" / "0.png")]):
        rc = main([*command, "--checkpoint", str(tmp_path / "other.pt"), "--output", str(tmp_path / "o")])
        _one_line_error(capsys, rc, "other.pt", *needles)


def test_eval_accepts_a_val_split_without_one_of_the_trained_classes(trained, data, tmp_path) -> None:
    """As training's own evaluation does: the absent class is scored as the metrics section says."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(data / "val", partial / "val")
    shutil.rmtree(partial / "val" / "blue")
    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(trained / "best.pt"), "--data", str(partial), "--output", str(out)]
    assert main([*args, "--workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 8 and len(metrics["confusion_matrix"]) == 3
    names = torch.load(trained / "best.pt", weights_only=True)["class_names"]
    assert sum(metrics["confusion_matrix"][names.index("blue")]) == 0  # no blue images: its row is empty


def test_non_image_file_to_predict(trained, tmp_path, capsys) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    rc = main(["predict", str(note), "--checkpoint", str(trained / "best.pt"), "--output", str(tmp_path / "p")])
    _one_line_error(capsys, rc, "notes.txt", "not a readable image")
    rc = main(["predict", str(tmp_path / "absent.png"), "--checkpoint", str(trained / "best.pt")])
    _one_line_error(capsys, rc, "absent.png", "does not exist")


def test_predict_cam_writes_a_heat_map_per_image_for_the_top_or_the_named_class(
    trained, data, tmp_path, capsys
) -> None:
    from PIL import Image

    checkpoint = str(trained / "best.pt")
    folder = data / "val" / "green"
    assert main(["predict", str(folder), "--checkpoint", checkpoint, "--output", str(tmp_path / "top"), "--cam"]) == 0
    results = json.loads((tmp_path / "top" / "predictions.json").read_text())
    assert len(results) == 4 and "Grad-CAM heat maps" in capsys.readouterr().out
    for result in results:
        assert result["cam"]["class"] == result["top5"][0]["class"]
        with Image.open(tmp_path / "top" / result["cam"]["image"]) as picture:
            assert picture.size == (32, 32) and picture.mode == "RGB"  # over the centre crop the model saw
    named = tmp_path / "named"
    assert main(["predict", str(folder), "--checkpoint", checkpoint, "--output", str(named), "--cam-class", "red"]) == 0
    assert {r["cam"]["class"] for r in json.loads((named / "predictions.json").read_text())} == {"red"}
    assert main(["predict", str(folder), "--checkpoint", checkpoint, "--output", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "cam").exists()
    assert "cam" not in json.loads((tmp_path / "plain" / "predictions.json").read_text())[0]


def test_predict_cam_refuses_an_unknown_class_and_an_exported_model(trained, data, tmp_path, capsys) -> None:
    image = str(data / "val" / "red" / "0.png")
    rc = main(["predict", image, "--checkpoint", str(trained / "best.pt"), "--cam-class", "purple"])
    _one_line_error(capsys, rc, "--cam-class 'purple' is not a class of", "red")
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"")  # refused by its name, before it is read
    _one_line_error(capsys, main(["predict", image, "--checkpoint", str(exported), "--cam"]), "exported model")


def test_missing_checkpoint_option(data, capsys) -> None:
    _one_line_error(capsys, main(["eval", "--data", str(data)]), "--checkpoint")


def test_image_folder_discovery_through_torchvision_finds_what_the_hand_written_scan_found(tmp_path) -> None:
    """torchvision's make_dataset replaced a hand-written walk: the same samples in the same order, on a tree with
    nested and hidden folders, hidden and non-image files, and a class absent from the split."""
    from tasks.data.folders import scan_image_folder
    from tasks.data.images import is_image_file

    root = tmp_path / "split"
    files = ["b/1.png", "b/a/2.jpg", "b/a.png", "a/x/y/3.PNG", "a/.hidden.png", "a/notes.txt", "a/.cache/4.png",
             "c/5.webp", ".ipynb_checkpoints/6.png"]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    classes = ["c", "a", "b", "absent"]  # a list from training: its own order, one class not in this split
    expected = []  # the walk as it was written by hand
    for label, name in enumerate(classes):
        if (root / name).is_dir():
            images = sorted(p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p))
            expected += [(p, label) for p in images]
    samples, names = scan_image_folder(root, classes)
    assert [(s.path, s.label) for s in samples] == expected and names == classes
    assert [s.path.name for s in samples] == ["5.webp", "4.png", "3.PNG", "1.png", "2.jpg", "a.png"]
    assert scan_image_folder(root)[1] == ["a", "b", "c"]  # the hidden folder is not a class


def test_the_most_confident_mistakes_are_kept_in_order() -> None:
    from tasks.classify import MISTAKES, ClassifyTask

    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 3.0], [2.0, 0.0], [0.0, 5.0]])  # predicted 0, 1, 1, 0, 1
    labels = torch.tensor([1, 1, 0, 0, 0])  # wrong: item 0 (p 0.98), item 2 (p 0.95), item 4 (p 0.99)
    batches = [
        {"images": logits[:3], "labels": labels[:3], "indices": torch.arange(3), "batch_size": 3},
        {"images": logits[3:], "labels": labels[3:], "indices": torch.arange(3, 5), "batch_size": 2},
    ]
    task = ClassifyTask(["cat", "dog"])
    metrics = task.evaluate(lambda x: x, batches, torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(2 / 5)
    assert [(m["index"], m["true"], m["predicted"]) for m in task.mistakes] == [
        (4, "cat", "dog"), (0, "dog", "cat"), (2, "cat", "dog")
    ]  # fmt: skip
    assert task.mistakes[0]["confidence"] == pytest.approx(torch.tensor([0.0, 5.0]).softmax(0)[1].item())
    assert MISTAKES >= 3


def test_kaggles_imagenet_layout_reads_its_flat_val_folder_through_the_solution_file(tmp_path, capsys) -> None:
    """ILSVRC/Data/CLS-LOC/train/<wnid>/ and a flat val/ labelled by LOC_val_solution.csv (each image's boxes'
    wnid), classes in LOC_synset_mapping.txt's order: the labels written here by hand come back."""
    import numpy as np
    from PIL import Image

    from tasks.data.folders import load_split

    root = tmp_path / "imagenet"
    images = root / "ILSVRC" / "Data" / "CLS-LOC"
    wnids = ["n01440764", "n01443537", "n01484850"]
    (root / "ILSVRC" / "Data" / "CLS-LOC").mkdir(parents=True)
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark, man-eater"]
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    rng = np.random.default_rng(0)

    def picture(path, label) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = np.zeros((32, 32, 3), np.uint8)
        colour[..., label] = 200  # the class is the colour channel, as the colours fixture's
        Image.fromarray(colour + rng.integers(0, 40, colour.shape, np.uint8)).save(path, format="JPEG")

    for label, wnid in enumerate(wnids):
        for i in range(8):
            picture(images / "train" / wnid / f"{wnid}_{i}.JPEG", label)
    truth = {f"ILSVRC2012_val_{i:08d}": i % 3 for i in range(1, 7)}
    rows = ["ImageId,PredictionString"]
    for image_id, label in truth.items():
        picture(images / "val" / f"{image_id}.JPEG", label)
        rows.append(f"{image_id},{wnids[label]} 1 2 30 31 {wnids[label]} 0 0 10 12 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    train, classes = load_split(root, "train", fmt="auto", classes=None)
    assert classes == wnids and len(train) == 24 and {s.label for s in train} == {0, 1, 2}
    val, _ = load_split(root, "val", fmt="auto", classes=classes)
    assert {s.path.stem: s.label for s in val} == truth
    out = tmp_path / "run"
    assert main(["--data", str(root), "--epochs", "1", "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 6
    rows[3] = "ILSVRC2012_val_00000003,n09999999 1 2 3 4"
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    rc = main(["--data", str(root), "--epochs", "1", "--output", str(tmp_path / "bad"), *FAST])
    _one_line_error(capsys, rc, "LOC_val_solution.csv, line 4: expected 'ImageId,wnid x1 y1 x2 y2 ...'")
    assert not (tmp_path / "bad").exists()
    (root / "LOC_val_solution.csv").unlink()
    rc = main(["--data", str(root), "--epochs", "1", "--output", str(tmp_path / "bad"), *FAST])
    _one_line_error(capsys, rc, "(Kaggle's ImageNet) has no LOC_val_solution.csv")


def _idx_bytes(array) -> bytes:
    """An IDX file of unsigned bytes, as MNIST's are written."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def test_mnist_and_fashion_mnist_as_torchvision_downloads_them_read_as_torchvision_reads_them(
    tmp_path, monkeypatch, capsys
) -> None:
    """MNIST/raw/ with the IDX files (torchvision's layout): the same images, labels and classes as
    torchvision.datasets.MNIST; FashionMNIST/raw/ with only the .gz files: Fashion-MNIST's classes; test stands
    in for val; trained end to end."""
    import gzip

    import numpy as np
    from PIL import Image
    from torchvision.datasets import MNIST

    from tasks.data.folders import load_split

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name, gz in (("MNIST", False), ("FashionMNIST", True)):
        raw = tmp_path / name / "raw"
        raw.mkdir(parents=True)
        for prefix, count in (("train", 30), ("t10k", 10)):
            images = rng.integers(0, 255, (count, 28, 28), np.uint8)
            labels = (np.arange(count) % 10).astype(np.uint8)
            for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
                data = _idx_bytes(array)
                path = raw / f"{prefix}-{kind}-ubyte"
                if gz:
                    path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
                else:
                    path.write_bytes(data)
    reference = MNIST(str(tmp_path), train=False)
    samples, names = load_split(tmp_path / "MNIST", "val", fmt="auto", classes=None)
    assert "evaluating on its 'test' split" in capsys.readouterr().out
    assert names == reference.classes and len(samples) == 10
    for index, sample in enumerate(samples):
        np.testing.assert_array_equal(np.asarray(Image.open(sample.path)), reference.data[index].numpy())
        assert sample.label == int(reference.targets[index])
    fashion, names = load_split(tmp_path / "FashionMNIST", "train", fmt="auto", classes=None)
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(fashion) == 30
    assert [s.label for s in fashion] == [i % 10 for i in range(30)]
    written = sorted((tmp_path / "cache").rglob("*.png"))
    load_split(tmp_path / "FashionMNIST", "train", fmt="auto", classes=None)
    assert sorted((tmp_path / "cache").rglob("*.png")) == written  # written once
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "MNIST"), "--output", str(out), "--epochs", "1", *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 10


def _cifar_pickle(path, document) -> None:
    """A CIFAR batch as CIFAR's Python version holds it: a pickled dict, protocol 2."""
    import pickle

    path.write_bytes(pickle.dumps(document, protocol=2))


def test_cifar_as_torchvision_downloads_it_reads_as_torchvision_reads_it_and_refuses_other_pickled_objects(
    tmp_path, monkeypatch, capsys
) -> None:
    """cifar-10-batches-py (pickles read by an unpickler of arrays alone): the same images, labels and classes as
    torchvision.datasets.CIFAR10 (its checksum check patched out for the synthetic files); cifar-100-binary: the
    fine labels and names; a batch that pickles another object stops the run in one line without running it."""
    import numpy as np
    from PIL import Image
    from torchvision.datasets import CIFAR10

    from tasks.data.folders import load_split

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    cifar10 = tmp_path / "cifar-10-batches-py"
    cifar10.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _cifar_pickle(cifar10 / "batches.meta", {"label_names": names, "num_vis": 3072})
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (6, 3072), np.uint8)
        labels = rng.integers(0, 10, 6).tolist()
        _cifar_pickle(cifar10 / batch, {"batch_label": batch, "labels": labels, "data": data})
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    for split, train in (("train", True), ("test", False)):
        reference = CIFAR10(str(tmp_path), train=train)
        samples, found = load_split(tmp_path, split, fmt="auto", classes=None)
        assert found == reference.classes == names and len(samples) == len(reference.data)
        for index, sample in enumerate(samples):
            np.testing.assert_array_equal(np.asarray(Image.open(sample.path)), reference.data[index])
            assert sample.label == reference.targets[index]
    out = tmp_path / "run"
    assert main(["--data", str(cifar10), "--output", str(out), "--epochs", "1", *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 6

    cifar100 = tmp_path / "c100" / "cifar-100-binary"
    cifar100.mkdir(parents=True)
    fine = [f"class{i}" for i in range(100)]
    (cifar100 / "fine_label_names.txt").write_text("\n".join(fine) + "\n")
    for name, count in (("train.bin", 8), ("test.bin", 4)):
        records = rng.integers(0, 255, (count, 3074), np.uint8)
        records[:, 0] = 7  # the coarse label
        records[:, 1] = np.arange(count) * 11  # the fine label
        (cifar100 / name).write_bytes(records.tobytes())
        if name == "test.bin":
            expected = records[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    samples, found = load_split(tmp_path / "c100", "test", fmt="auto", classes=None)
    assert found == fine and [s.label for s in samples] == [0, 11, 22, 33]
    for index, sample in enumerate(samples):
        np.testing.assert_array_equal(np.asarray(Image.open(sample.path)), expected[index])

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {tmp_path / 'ran'}",)

    _cifar_pickle(cifar10 / "data_batch_3", {"data": Exploit(), "labels": [0]})
    capsys.readouterr()
    assert main(["--data", str(cifar10), "--output", str(tmp_path / "bad"), "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data_batch_3 is not a CIFAR batch of arrays (it names posix.system" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "case",
    ["idx-header", "idx-truncated", "idx-count", "cifar-bin-size", "cifar-bin-names", "cifar-no-data", "cifar-label"]
    + ["cifar-not-pickle"]
    + ["svhn-mat", "svhn-shape", "stl-size"],
)
def test_a_broken_mnist_cifar_svhn_or_stl10_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys, case) -> None:
    """Each malformed file of the array sets stops the run with exit 2 and one line naming the file (a label past
    the classes, the data)."""
    import numpy as np
    from scipy.io import savemat

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    if case.startswith("svhn"):
        root = data_root = tmp_path / "svhn"
        root.mkdir()
        for split in ("train", "test"):
            savemat(root / f"{split}_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [[1], [2]]})
        broken = root / "train_32x32.mat"
        if case == "svhn-mat":
            broken.write_bytes(b"\x00" * 200)
        else:
            savemat(broken, {"X": np.zeros((32, 32, 2), np.uint8), "y": [[1], [2]]})
    elif case == "stl-size":
        root = data_root = tmp_path / "stl10_binary"
        root.mkdir()
        (root / "class_names.txt").write_text("a\nb\n")
        for split in ("train", "test"):
            (root / f"{split}_X.bin").write_bytes(bytes(2 * 3 * 96 * 96))
            (root / f"{split}_y.bin").write_bytes(bytes([1, 2]))
        broken = root / "train_X.bin"
        broken.write_bytes(bytes(3 * 96 * 96))
    elif case.startswith("idx"):
        root = tmp_path / "MNIST" / "raw"
        root.mkdir(parents=True)
        for prefix, count in (("train", 4), ("t10k", 2)):
            images = np.zeros((count, 28, 28), np.uint8)
            (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
            (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(count, dtype=np.uint8)))
        broken = root / "train-images-idx3-ubyte"
        data = broken.read_bytes()
        if case == "idx-header":
            broken.write_bytes(b"\x00\x00\x09\x03" + data[4:])
        elif case == "idx-truncated":
            broken.write_bytes(data[:-5])
        else:
            broken = root / "train-labels-idx1-ubyte"
            broken.write_bytes(_idx_bytes(np.arange(3, dtype=np.uint8)))
        data_root = tmp_path / "MNIST"
    else:
        form = "cifar-10-batches-bin" if case.startswith("cifar-bin") else "cifar-10-batches-py"
        root = tmp_path / form
        root.mkdir()
        rng = np.random.default_rng(0)
        if form.endswith("bin"):
            (root / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
            for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
                (root / name).write_bytes(rng.integers(0, 10, (2, 3073), np.uint8).tobytes())
            broken = root / "data_batch_2.bin"
            broken.write_bytes(broken.read_bytes()[:-1])
            if case == "cifar-bin-names":  # a class list that is not UTF-8 (a traceback before)
                broken = root / "batches.meta.txt"
                broken.write_bytes(b"caf\xe9\n" * 10)
        else:
            _cifar_pickle(root / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
            for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
                batch = {"data": rng.integers(0, 255, (2, 3072), np.uint8), "labels": [1, 2]}
                _cifar_pickle(root / name, batch)
            broken = root / "data_batch_4"
            if case == "cifar-no-data":
                _cifar_pickle(broken, {"labels": [1, 2]})
            elif case == "cifar-label":
                _cifar_pickle(broken, {"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]})
            else:
                broken.write_bytes(b"not a pickle at all")
        data_root = root
    out = tmp_path / "run"
    assert main(["--data", str(data_root), "--output", str(out), "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err
    named = str(broken) if case != "cifar-label" else str(data_root)
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err
    assert not out.exists()


def test_food101_and_oxford_pets_as_torchvision_downloads_them_read_as_torchvision_reads_them(
    tmp_path, monkeypatch, capsys
) -> None:
    """food-101/ (meta/train.json, meta/test.json) and oxford-iiit-pet/ (annotations/trainval.txt, test.txt): the
    same image files, labels and class names as torchvision.datasets.Food101 and OxfordIIITPet on the same synthetic
    files; test stands in for val; a listed image that is missing is skipped and counted; trained end to end."""
    from PIL import Image
    from torchvision.datasets import Food101, OxfordIIITPet

    from tasks.data.folders import load_split

    food = tmp_path / "food-101"
    dishes = ["apple_pie", "ramen", "baby_back_ribs"]
    for split, count in (("train", 3), ("test", 1)):
        listing = {dish: [f"{dish}/{100 * (split == 'test') + k}" for k in range(count)] for dish in dishes}
        (food / "meta").mkdir(parents=True, exist_ok=True)
        (food / "meta" / f"{split}.json").write_text(json.dumps(listing))
        for dish, items in listing.items():
            for item in items:
                (food / "images" / dish).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 30), (len(item), 90, 20)).save(food / "images" / f"{item}.jpg")
    pets = tmp_path / "oxford-iiit-pet"
    (pets / "annotations").mkdir(parents=True)
    (pets / "images").mkdir()
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("great_pyrenees", 2)]
    for split, numbers in (("trainval", range(1, 4)), ("test", range(10, 12))):
        lines = []
        for label, (breed, species) in enumerate(breeds, start=1):
            for n in numbers:
                lines.append(f"{breed}_{n} {label} {species} {label}")
                Image.new("RGB", (40, 30), (n, label, 20)).save(pets / "images" / f"{breed}_{n}.jpg")
        (pets / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(OxfordIIITPet, "_check_exists", lambda self: True)
    for root, reference_of, ours in (
        (tmp_path, lambda split: Food101(str(tmp_path), split=split), {"train": "train", "test": "test"}),
        (pets, lambda split: OxfordIIITPet(str(tmp_path), split=split), {"trainval": "train", "test": "val"}),
    ):
        for theirs, split in ours.items():
            reference = reference_of(theirs)
            samples, names = load_split(root, split, fmt="auto", classes=None)
            assert names == reference.classes
            files = reference._image_files if isinstance(reference, Food101) else reference._images
            assert [(s.path, s.label) for s in samples] == list(zip(files, reference._labels))
    assert "evaluating on its 'test' split" in capsys.readouterr().out
    assert load_split(pets, "train", fmt="auto", classes=None)[1][1] == "American Bulldog"
    (pets / "images" / "Bengal_11.jpg").unlink()
    out = tmp_path / "run"
    assert main(["--data", str(pets), "--output", str(out), "--epochs", "1", *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 7
    assert f"warning: skipping unreadable image {pets / 'images' / 'Bengal_11.jpg'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case", ["food-json", "food-shape", "food-class", "pets-line", "pets-id", "flowers-mat", "dtd-line", "aircraft"]
)
def test_a_broken_food101_pets_flowers_dtd_or_aircraft_list_is_one_line_naming_it(tmp_path, capsys, case) -> None:
    """A malformed split list of Food-101, the Pets, Flowers-102, DTD or FGVC-Aircraft stops the run with exit 2 and
    one line naming it."""
    from PIL import Image

    if case == "dtd-line":
        root = tmp_path / "dtd"
        (root / "images" / "banded").mkdir(parents=True)
        (root / "labels").mkdir()
        Image.new("RGB", (20, 20)).save(root / "images" / "banded" / "banded_0001.jpg")
        for split in ("train", "val"):
            (root / "labels" / f"{split}1.txt").write_text("banded/banded_0001.jpg\ndotted/banded_0001.jpg\n")
        broken = root / "labels" / "val1.txt"
        broken.write_text("banded_0001.jpg\n")
    elif case == "aircraft":
        root = tmp_path / "fgvc-aircraft-2013b"
        (root / "data" / "images").mkdir(parents=True)
        (root / "data" / "variants.txt").write_text("707-320\nA300B4\n")
        Image.new("RGB", (20, 20)).save(root / "data" / "images" / "0000001.jpg")
        for split in ("train", "val"):
            (root / "data" / f"images_variant_{split}.txt").write_text("0000001 707-320\n0000001 A300B4\n")
        broken = root / "data" / "images_variant_val.txt"
        broken.write_text("0000001 Concorde\n")
    elif case == "flowers-mat":
        root = tmp_path / "flowers-102"
        (root / "jpg").mkdir(parents=True)
        (root / "imagelabels.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really")
        broken = root / "setid.mat"
        broken.write_bytes(b"\x00" * 64)
    elif case.startswith("food"):
        root = tmp_path / "food-101"
        (root / "images" / "ramen").mkdir(parents=True)
        (root / "meta").mkdir()
        Image.new("RGB", (20, 20)).save(root / "images" / "ramen" / "1.jpg")
        for split in ("train", "test"):
            (root / "meta" / f"{split}.json").write_text(json.dumps({"ramen": ["ramen/1"], "pho": ["ramen/1"]}))
        broken = root / "meta" / "test.json"
        broken.write_text(
            {"food-json": "{", "food-shape": '{"ramen": "ramen/1"}', "food-class": '{"udon": ["ramen/1"]}'}[case]
        )
    else:
        root = tmp_path / "oxford-iiit-pet"
        (root / "images").mkdir(parents=True)
        (root / "annotations").mkdir()
        Image.new("RGB", (20, 20)).save(root / "images" / "Bengal_1.jpg")
        for split in ("trainval", "test"):
            (root / "annotations" / f"{split}.txt").write_text("Bengal_1 1 1 1\nBoxer_1 2 2 1\n")
        broken = root / "annotations" / "test.txt"
        broken.write_text({"pets-line": "Bengal_1 one 1 1\n", "pets-id": "Bengal_1 9 1 1\n"}[case])
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(broken) in err, err
    assert not out.exists()


def test_flowers102_as_torchvision_downloads_it_reads_as_torchvision_reads_it(tmp_path, monkeypatch) -> None:
    """flowers-102/ (jpg/, imagelabels.mat, setid.mat): the same image files, labels and class names as
    torchvision.datasets.Flowers102 (its checksum check patched out for the synthetic files), for its own train,
    val and test splits."""
    import numpy as np
    from PIL import Image
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    from tasks.data.folders import load_split

    flowers = tmp_path / "flowers-102"
    (flowers / "jpg").mkdir(parents=True)
    labels = np.array([1, 5, 102, 5, 1, 33, 7, 7, 1], np.uint8)  # imagelabels.mat: image k's class, 1-based
    for k in range(1, len(labels) + 1):
        Image.new("RGB", (20, 16), (k, 0, 0)).save(flowers / "jpg" / f"image_{k:05d}.jpg")
    savemat(flowers / "imagelabels.mat", {"labels": labels[None, :]})
    savemat(
        flowers / "setid.mat",
        {"trnid": np.array([[9, 2, 4, 1]]), "valid": np.array([[3, 6]]), "tstid": np.array([[5, 7, 8]])},
    )
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    for split in ("train", "val", "test"):
        reference = Flowers102(str(tmp_path), split=split)
        samples, names = load_split(flowers, split, fmt="auto", classes=None)
        assert names == reference.classes and len(names) == 102
        assert [(s.path, s.label) for s in samples] == list(zip(reference._image_files, reference._labels))


def test_dtd_and_fgvc_aircraft_as_torchvision_downloads_them_read_as_torchvision_reads_them(tmp_path) -> None:
    """dtd/dtd/ (labels/{train,val,test}1.txt) and fgvc-aircraft-2013b/data/ (images_variant_<split>.txt,
    variants.txt): the same image files, labels and class names as torchvision.datasets.DTD and FGVCAircraft on the
    same synthetic files, for each of their splits."""
    from PIL import Image
    from torchvision.datasets import DTD, FGVCAircraft

    from tasks.data.folders import load_split

    dtd = tmp_path / "dtd" / "dtd"
    textures = ["zigzagged", "banded", "dotted"]
    for split, numbers in (("train", (1, 2)), ("val", (3,)), ("test", (4, 5))):
        lines = [f"{t}/{t}_{n:04d}.jpg" for n in numbers for t in textures]
        (dtd / "labels").mkdir(parents=True, exist_ok=True)
        (dtd / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            (dtd / "images" / line).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 16)).save(dtd / "images" / line)
    aircraft = tmp_path / "fgvc-aircraft-2013b" / "data"
    (aircraft / "images").mkdir(parents=True)
    variants = ["707-320", "A300B4", "Cessna 172", "DHC-1"]
    (aircraft / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, ids in (("train", (11, 12, 13)), ("val", (21, 22)), ("trainval", (11, 12, 13, 21, 22)), ("test", (31,))):
        lines = [f"{i:07d} {variants[i % 4]}" for i in ids]
        (aircraft / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        for i in ids:
            Image.new("RGB", (20, 16)).save(aircraft / "images" / f"{i:07d}.jpg")
    for root, reference_of, splits in (
        (tmp_path / "dtd", lambda split: DTD(str(tmp_path), split=split), ("train", "val", "test")),
        (
            tmp_path / "fgvc-aircraft-2013b",
            lambda split: FGVCAircraft(str(tmp_path), split=split),
            ("train", "val", "trainval", "test"),
        ),
    ):
        for split in splits:
            reference = reference_of(split)
            samples, names = load_split(root, split, fmt="auto", classes=None)
            assert names == reference.classes
            assert [(str(s.path), s.label) for s in samples] == [
                (str(f), label) for f, label in zip(reference._image_files, reference._labels)
            ]


def _stanford_cars(root: Path, *, labelled: bool = True) -> dict[str, list[tuple[str, int]]]:
    """stanford_cars/ as torchvision reads it: cars_meta.mat's class_names, each split's annotations (a MATLAB
    struct array of box corners, class 1..K and fname; the test file's without class where not ``labelled``)."""
    import numpy as np
    from PIL import Image
    from scipy.io import savemat

    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "smart fortwo Convertible 2012"]
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    splits = {"train": [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 2), ("00004.jpg", 3)]}
    splits["test"] = [("00001.jpg", 2), ("00002.jpg", 3)]
    for split, entries in splits.items():
        fields = [
            "bbox_x1",
            "bbox_y1",
            "bbox_x2",
            "bbox_y2",
            *(["class"] if labelled or split == "train" else []),
            "fname",
        ]
        records = np.zeros((1, len(entries)), dtype=[(field, "O") for field in fields])
        for k, (fname, label) in enumerate(entries):
            values = {"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 15, "bbox_y2": 12, "class": label, "fname": fname}
            for field in fields:
                records[0, k][field] = values[field]
            (root / f"cars_{split}").mkdir(exist_ok=True)
            Image.new("RGB", (20, 16), (k, label, 0)).save(root / f"cars_{split}" / fname)
        annotations = root / ("devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat")
        savemat(annotations, {"annotations": records})
    return splits


def test_stanford_cars_as_torchvision_keeps_it_reads_as_torchvision_reads_it(tmp_path, capsys) -> None:
    """stanford_cars/ (devkit/cars_meta.mat, devkit/cars_train_annos.mat with cars_train/,
    cars_test_annos_withlabels.mat with cars_test/): the same image files, labels and class names as
    torchvision.datasets.StanfordCars on the same synthetic files; test stands in for val; trained end to end. A test
    file without its labels (the benchmark's cars_test_annos.mat under the labelled name) is one line naming it."""
    from torchvision.datasets import StanfordCars

    from tasks.data.folders import load_split

    _stanford_cars(tmp_path / "stanford_cars")
    for split, ours in (("train", "train"), ("test", "val")):
        reference = StanfordCars(str(tmp_path), split=split)
        samples, names = load_split(tmp_path, ours, fmt="auto", classes=None)
        assert names == reference.classes and len(names) == 3
        assert [(str(s.path), s.label) for s in samples] == reference._samples
    assert "evaluating on its 'test' split" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "stanford_cars"), "--output", str(out), "--epochs", "1", *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 2
    unlabelled = tmp_path / "unlabelled" / "stanford_cars"
    _stanford_cars(unlabelled, labelled=False)
    capsys.readouterr()
    assert main(["--data", str(unlabelled), "--output", str(tmp_path / "bad"), "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unlabelled / 'cars_test_annos_withlabels.mat'}: expected annotations" in err
    assert not (tmp_path / "bad").exists()


def test_svhn_and_stl10_as_torchvision_downloads_them_read_as_torchvision_reads_them(tmp_path, monkeypatch) -> None:
    """SVHN's *_32x32.mat (label 10 is the digit 0) and STL-10's stl10_binary/ (96 × 96 images stored column by
    column): the same pixels, labels and classes as torchvision.datasets.SVHN and STL10 on the same synthetic files
    (their checksum checks patched out); SVHN's extra split too."""
    import numpy as np
    from PIL import Image
    from scipy.io import savemat
    from torchvision.datasets import STL10, SVHN

    from tasks.data.folders import load_split

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    svhn = tmp_path / "svhn"
    svhn.mkdir()
    for split, count in (("train", 5), ("test", 3), ("extra", 2)):
        digits = np.array([[10], [1], [9], [10], [4]][:count], np.uint8)
        savemat(svhn / f"{split}_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, count), np.uint8), "y": digits})
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    (stl / "class_names.txt").write_text("airplane\nbird\ncar\n")
    for split, count in (("train", 4), ("test", 2)):
        (stl / f"{split}_X.bin").write_bytes(rng.integers(0, 255, (count, 3, 96, 96), np.uint8).tobytes())
        (stl / f"{split}_y.bin").write_bytes(np.array([1, 3, 2, 1][:count], np.uint8).tobytes())
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    for root, reference_of, splits in (
        (svhn, lambda split: SVHN(str(svhn), split=split), ("train", "test", "extra")),
        (stl, lambda split: STL10(str(tmp_path), split=split), ("train", "test")),
    ):
        for split in splits:
            reference = reference_of(split)
            samples, names = load_split(root, split, fmt="auto", classes=None)
            assert len(samples) == len(reference)
            if isinstance(reference, STL10):
                assert names == reference.classes
            else:
                assert names == [str(d) for d in range(10)]
            for index, sample in enumerate(samples):
                image, label = reference[index]
                np.testing.assert_array_equal(np.asarray(Image.open(sample.path)), np.asarray(image))
                assert sample.label == label
