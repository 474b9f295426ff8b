"""One backbone, three heads: one backbone call per forward, partial labels, weighting, and the runner."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from heads.segmentation import SegmentationLoss
from tasks.data.embedded import shapes_dataset
from tasks.multitask import build_model, main
from tests.conftest import NEEDS_OPENVINO

NUM = {"classify": 3, "detect": 4, "segment": 4}
SMALL_DETECTION = dict(
    anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
    fpn_channels=32,
    representation_size=64,
    box_batch_size_per_image=32,
)
FAST = ["--backbone", "resnet18", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--image-size", "64"]


def _model(**options):
    return build_model("resnet18", ["classify", "detect", "segment"], NUM, detection_options=SMALL_DETECTION, **options)


def _batch(n: int = 4, size: int = 64):
    torch.manual_seed(0)
    images = torch.randn(n, 3, size, size)
    boxes = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1 + i % 3])} for i in range(n)]
    masks = torch.randint(0, 4, (n, size, size))
    return images, boxes, masks


def _count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_one_backbone_call_per_forward_in_eval_and_training() -> None:
    model = _model()
    calls = _count_backbone_calls(model)
    images, boxes, masks = _batch()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert calls[0] == 1
    assert out["classify"].shape == (4, 3) and out["segment"].shape == (4, 4, 64, 64) and len(out["detect"]) == 4
    model.train()
    targets = {
        "classify": (torch.arange(4), torch.tensor([0, 1, 2, 0])),
        "detect": (torch.arange(4), boxes),
        "segment": (torch.arange(4), masks),
    }
    losses = model(images, None, targets)
    assert calls[0] == 2
    assert {"classify", "detect", "segment", "loss"} <= set(losses)
    assert losses["loss"].item() == pytest.approx(sum(losses[t].item() for t in ("classify", "detect", "segment")))


def test_heads_read_the_same_features_as_single_task_models() -> None:
    from tasks.classify import ClassificationModel
    from tasks.segment import UNet

    model = _model().eval()
    images, _, _ = _batch(2)
    with torch.no_grad():
        out = model(images)
        single_classify = ClassificationModel(model.backbone, model.heads["classify"]).eval()(images)
        single_segment = UNet(model.backbone, model.heads["segment"]).eval()(images)
    torch.testing.assert_close(out["classify"], single_classify)
    torch.testing.assert_close(out["segment"], single_segment)


def test_partial_labels_use_only_the_labelled_images() -> None:
    model = _model().train()
    for module in model.modules():  # no batch statistics: an image's loss then depends on that image alone
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images, boxes, masks = _batch()
    targets = {
        "classify": (torch.tensor([0, 1]), torch.tensor([2, 1])),
        "detect": (torch.tensor([2]), [boxes[2]]),
        "segment": (torch.tensor([1, 3]), masks[[1, 3]]),
    }
    torch.manual_seed(1)
    losses = model(images, None, targets)
    with torch.no_grad():  # the classification loss by hand, on images 0 and 1 only
        logits = model.heads["classify"](model.backbone(images[:2]))
    assert losses["classify"].item() == pytest.approx(F.cross_entropy(logits, torch.tensor([2, 1])).item(), rel=1e-5)
    with torch.no_grad():
        seg_logits = model.heads["segment"](model.backbone(images[[1, 3]]), (64, 64))
    expected = SegmentationLoss()(seg_logits, masks[[1, 3]])["loss"]
    assert losses["segment"].item() == pytest.approx(expected.item(), rel=1e-5)
    changed = images.clone()
    changed[3] = torch.randn(3, 64, 64)  # image 3 has no class label: the classification loss must not move
    torch.manual_seed(1)
    again = model(changed, None, targets)
    assert again["classify"].item() == pytest.approx(losses["classify"].item(), rel=1e-6)
    assert again["segment"].item() != pytest.approx(losses["segment"].item(), rel=1e-6)
    only_boxes = model(
        images,
        None,
        {
            "detect": targets["detect"],
            "classify": (torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)),
        },
    )
    assert "classify" not in only_boxes and only_boxes["loss"].item() == pytest.approx(only_boxes["detect"].item())


def test_fixed_and_uncertainty_weighting() -> None:
    images, boxes, masks = _batch(2)
    targets = {"classify": (torch.arange(2), torch.tensor([0, 1])), "segment": (torch.arange(2), masks[:2])}
    fixed = _model(loss_weights={"classify": 0.5, "segment": 2.0, "detect": 1.0}).train()
    losses = fixed(images, None, targets)
    assert losses["loss"].item() == pytest.approx(
        0.5 * losses["classify"].item() + 2.0 * losses["segment"].item(), rel=1e-5
    )
    learned = _model(weighting="uncertainty").train()
    with torch.no_grad():
        learned.log_variances["classify"].fill_(1.0)
        learned.log_variances["segment"].fill_(-0.5)
    losses = learned(images, None, targets)
    expected = (
        torch.exp(torch.tensor(-1.0)) * losses["classify"]
        + 0.5
        + torch.exp(torch.tensor(0.5)) * losses["segment"]
        - 0.25
    )
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["loss"].backward()
    assert learned.log_variances["classify"].grad is not None and learned.log_variances["classify"].grad != 0
    assert learned.task_weights()["classify"] == pytest.approx(float(torch.exp(torch.tensor(-1.0))))


def test_scale_jitter_moves_boxes_and_masks_with_the_image_and_voids_what_it_brings_in() -> None:
    import numpy as np

    from tasks.data.multitask import MultiTaskPipeline

    image = np.full((64, 64, 3), 200, np.uint8)
    mask = np.ones((64, 64), np.uint8)  # class 1 everywhere: any other value came from the jitter
    boxes, labels = np.array([[8.0, 8.0, 56.0, 56.0]], np.float32), np.array([1])
    pipeline = MultiTaskPipeline(64, train=True, hflip=0.0, scale_jitter=0.5, color_jitter=0.0, seed=3)
    zoomed_out = unchanged = 0
    for _ in range(20):
        tensor, out_boxes, _, out_mask = pipeline(image, boxes, labels, mask)
        assert tensor.shape == (3, 64, 64) and out_mask.shape == (64, 64)
        values = set(out_mask.unique().tolist())
        assert values <= {1, 255}
        width = float(out_boxes[0, 2] - out_boxes[0, 0])
        if 255 in values:  # zoomed out about the centre: the box shrank by the image's scale
            zoomed_out += 1
            inside = int((out_mask[32] == 1).sum())  # the image's width on the middle row
            assert width == pytest.approx(48 * inside / 64, abs=2.0)
            centre = (out_boxes[0, 0] + out_boxes[0, 2]) / 2
            assert float(centre) == pytest.approx(32.0, abs=1.0)
        elif width == pytest.approx(48.0):
            unchanged += 1
    assert zoomed_out > 0 and unchanged > 0  # p=0.5: some draws are left as they are
    still = MultiTaskPipeline(64, train=True, hflip=0.0, scale_jitter=0.0, color_jitter=0.0, seed=3)
    assert set(still(image, boxes, labels, mask)[3].unique().tolist()) == {1}


def test_build_model_rejects_unknown_tasks() -> None:
    with pytest.raises(ValueError, match="depth"):
        build_model("resnet18", ["classify", "depth"], {"classify": 2, "depth": 1})


def test_a_vits_classifier_reads_its_own_map_beside_the_other_heads() -> None:
    """With a ViT the classification head reads the model's own stride-16 map (c4, its normed tokens), as the
    classify runner's does, not the pyramid's max-pooled c5; the detector and the U-Net still get c2..c5. Alone,
    the classifier leaves no pyramid layer without a gradient."""
    torch.manual_seed(0)
    model = build_model(
        "timm:vit_tiny_patch16_224", ["classify", "detect", "segment"], NUM, detection_options=SMALL_DETECTION
    )
    assert model.heads["classify"].level == "c4"
    assert [info.name for info in model.backbone.feature_info] == ["c2", "c3", "c4", "c5"]
    alone = build_model("resnet18", ["classify"], NUM)
    assert alone.heads["classify"].level == "c5"  # a ResNet's deepest, as before
    alone = build_model("timm:vit_tiny_patch16_224", ["classify"], NUM)
    assert alone.heads["classify"].level == "c4" and [i.name for i in alone.backbone.feature_info] == ["c4"]
    features = alone.backbone(torch.randn(2, 3, 64, 64))
    alone.heads["classify"](features).sum().backward()
    assert [n for n, p in alone.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return shapes_dataset(tmp_path_factory.mktemp("shapes"), size=64, train_images=6, val_images=4)


def test_runner_trains_on_partial_labels_from_a_dataset_yaml(shapes_root, tmp_path, capsys) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    for split, keep in (("train", 3), ("val", 2)):  # image labels for the first few images only
        rows = (shapes_root / f"{split}.csv").read_text().splitlines()[1 : keep + 1]
        (labels / f"{split}.csv").write_text("\n".join(f"{shapes_root}/{row}" for row in rows) + "\n")
    seg = tmp_path / "seg"  # masks for copies of the last images: images no other task has
    for split, names in (("train", ["00004.png", "00005.png", "00006.png"]), ("val", ["00003.png", "00004.png"])):
        for kind, folder in (("images", shapes_root / split), ("masks", shapes_root / "masks" / split)):
            (seg / kind / split).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(folder / name, seg / kind / split / name)
    shutil.copy(shapes_root / "classes.txt", seg / "classes.txt")
    spec = tmp_path / "data.yaml"
    spec.write_text(
        f"classify: {{root: {labels}, format: csv, classes: [square, circle, triangle]}}\n"
        f"detect: {shapes_root}\nsegment: seg\n"
    )
    out = tmp_path / "run"
    assert main(["--data", str(spec), "--output", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "9 train images (labelled for classify 3, detect 6, segment 3)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"classify", "detect", "segment", "main"}
    assert metrics["classify"]["num_samples"] == 2  # scored on the labelled val images only
    assert metrics["detect"]["num_images"] == 4  # the detection data's own val split
    assert metrics["segment"]["num_pixels"] == 2 * 64 * 64
    assert set(metrics["segment"]) >= {
        "mIoU",
        "per_class_iou",
        "mDice",
        "per_class_dice",
        "pixel_accuracy",
        "mean_class_accuracy",
    }
    assert set(metrics["detect"]) >= {"coco", "voc"} and "AP50" in metrics["detect"]["coco"]
    assert 0.0 <= metrics["main"] <= 1.0
    # each task's figures, as its single-task runner draws them, in a folder of its name
    for task, figures in {
        "classify": {"confusion_matrix.png", "confusion_matrix_normalized.png"},
        "detect": {"pr_curve.png", "f1_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png"},
        "segment": {"per_class_iou.png", "confusion_matrix_normalized.png"},
    }.items():
        assert figures <= {p.name for p in (out / task).iterdir() if p.stat().st_size}, task
    assert (out / "classify" / "mistakes.png").exists() == (metrics["classify"]["accuracy"] < 1)
    counts = np.asarray(metrics["detect"]["confusion_matrix"]["counts"])  # 3 shapes and background
    truth = json.loads((shapes_root / "annotations" / "instances_val.json").read_text())["annotations"]
    assert counts.shape == (4, 4) and counts[:3].sum() == len(truth)  # each val box matched or missed once
    predictions = json.loads((out / "predictions.json").read_text())
    assert counts[:, :3].sum() <= len(predictions)  # a column counts kept detections, each at most once


def test_a_yolo_segmentation_yaml_serves_detect_and_segment_from_its_polygons(tmp_path, monkeypatch, capsys) -> None:
    """Ultralytics' data YAML as the whole --data: each image's polygons give its boxes and its mask, joined by
    path; classify has no labels there, which is one line."""
    from tests.test_data_yolo import NAMES, polygon_set

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = polygon_set(tmp_path / "yolo", splits=(("train", 6), ("val", 4)))
    out = tmp_path / "run"
    argv = ["--tasks", "detect,segment", "--data", str(root / "data.yaml"), "--output", str(out), *FAST]
    assert main(argv) == 0
    assert "6 train images (labelled for detect 6, segment 6)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["detect"]["coco"]["per_class_AP"]) == set(NAMES)
    assert list(metrics["segment"]["per_class_iou"]) == ["background", *NAMES]
    assert metrics["segment"]["num_pixels"] == 4 * 48 * 64 and metrics["detect"]["num_images"] == 4
    rc = main(["--data", str(root / "data.yaml"), "--output", str(tmp_path / "other"), *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "is YOLO data: boxes and polygons for detect and segment" in err, err


def test_a_yolo_folder_without_split_folders_holds_out_the_same_images_for_both_tasks(tmp_path, monkeypatch, capsys):
    """images/ and labels/ with no split folders: detect and segment hold out the same fifth, so no image trains
    one head and validates the other."""
    from tests.test_data_yolo import polygon_set

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    source = polygon_set(tmp_path / "yolo", splits=(("train", 6), ("val", 4)))
    flat = tmp_path / "flat"
    for kind in ("images", "labels"):
        (flat / kind).mkdir(parents=True)
        for path in sorted((source / kind).rglob("*.*")):
            shutil.copy(path, flat / kind / f"{path.parent.name}-{path.name}")
    out = tmp_path / "run"
    assert main(["--tasks", "detect,segment", "--data", str(flat), "--output", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "8 train images (labelled for detect 8, segment 8)" in printed
    assert printed.count("holding out 20% for validation (2 of 10 images") == 1  # once, not per task and read
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["segment"]["num_pixels"] == 2 * 48 * 64 and metrics["detect"]["num_images"] == 2


def test_a_coco_2017_root_serves_detect_and_segment_from_train2017_and_val2017(
    shapes_root, tmp_path, monkeypatch, capsys
):
    """COCO's own layout (train2017/, val2017/, annotations/instances_<split>2017.json with polygons): both tasks
    find the release-named splits without a dataset YAML, and join on their images. A file of boxes alone is one
    line for segmentation, not masks of background."""
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(shapes_root / split, root / f"{split}2017")
        document = json.loads((shapes_root / "annotations" / f"instances_{split}.json").read_text())
        for a in document["annotations"]:  # each box as a polygon
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))
    out = tmp_path / "run"
    assert main(["--tasks", "detect,segment", "--data", str(root), "--output", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "6 train images (labelled for detect 6, segment 6)" in printed and "held out" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detect"]["num_images"] == 4 and metrics["segment"]["num_pixels"] == 4 * 64 * 64
    # train2017 alone: both tasks hold the same images out of it, and train on the rest
    from tasks.data.detection_splits import load_detection_splits
    from tasks.data.segmentation import load_segmentation

    shutil.rmtree(root / "val2017")
    (root / "annotations" / "instances_val2017.json").unlink()
    segment = {
        split: {s.image for s in load_segmentation(root, split, classes=None).samples} for split in ("train", "val")
    }
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    detect = {"train": {s.path for s in train.samples}, "val": {s.path for s in val.samples}}
    assert segment == detect and len(segment["val"]) == 1 and len(segment["train"]) == 5
    assert segment["train"] | segment["val"] == set((root / "train2017").iterdir())
    boxes_only = root / "annotations" / "instances_train2017.json"
    document = json.loads(boxes_only.read_text())
    for a in document["annotations"]:
        del a["segmentation"]
    boxes_only.write_text(json.dumps(document))
    assert main(["--tasks", "detect,segment", "--data", str(root), "--output", str(tmp_path / "bad"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"annotation file {boxes_only}: none of its " in err
    assert not (tmp_path / "bad").exists()


def test_each_task_reads_its_own_split_names_from_the_dataset_yaml(shapes_root, tmp_path, capsys) -> None:
    """VOC2007 detection (trainval/test) joined as it is with VOC2012 segmentation (train/val): per-task splits."""
    seg = tmp_path / "seg"
    for split, own, names in (("train", "trainval", ["00001.png", "00002.png"]), ("val", "test", ["00001.png"])):
        for kind, folder in (("images", shapes_root / split), ("masks", shapes_root / "masks" / split)):
            (seg / kind / own).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(folder / name, seg / kind / own / name)
    shutil.copy(shapes_root / "classes.txt", seg / "classes.txt")
    spec = tmp_path / "data.yaml"
    spec.write_text(f"detect: {shapes_root}\nsegment: {{root: seg, train_split: trainval, val_split: test}}\n")
    out = tmp_path / "run"
    assert main(["--data", str(spec), "--output", str(out), "--tasks", "detect,segment", *FAST]) == 0
    assert "8 train images (labelled for detect 6, segment 2)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["segment"]["num_pixels"] == 64 * 64 and metrics["detect"]["num_images"] == 4
    spec.write_text(f"detect: {shapes_root}\nsegment: {{root: seg, trainsplit: trainval}}\n")
    assert main(["--data", str(spec), "--output", str(tmp_path / "bad"), "--tasks", "detect,segment", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key(s) trainsplit under 'segment'" in err
    spec.write_text(f"detect: {shapes_root}\nsegment: {{root: seg}}\nsegmnet: {{root: seg}}\n")  # a misspelt task
    assert main(["--data", str(spec), "--output", str(tmp_path / "bad2"), "--tasks", "detect,segment", *FAST]) == 2
    err = capsys.readouterr().err
    assert err == f"error: dataset file {spec}: unknown key(s) segmnet (valid: classify, detect, segment)\n"


def test_runner_eval_and_predict(shapes_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--data", str(shapes_root), "--output", str(out), "--tasks", "detect,segment", *FAST]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert set(trained) == {"detect", "segment", "main"}
    assert (
        main(
            ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(shapes_root), "--output", str(tmp_path / "e")]
        )
        == 0
    )
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert again["segment"]["confusion_matrix"] == trained["segment"]["confusion_matrix"]
    assert again["detect"]["coco"]["AP"] == pytest.approx(trained["detect"]["coco"]["AP"])
    pred = tmp_path / "p"
    assert (
        main(
            [
                "predict",
                str(shapes_root / "val" / "00001.png"),
                "--checkpoint",
                str(out / "best.pt"),
                "--output",
                str(pred),
            ]
        )
        == 0
    )
    entry = json.loads((pred / "predictions.json").read_text())[0]
    assert set(entry) == {"path", "image", "detect", "segment"}
    assert (pred / "masks" / "00001.png").is_file() and (pred / "images" / "00001.png").is_file()
    rc = main(["predict", str(shapes_root / "val" / "00001.png"), "--checkpoint", str(out / "best.pt"), "--cam"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--cam explains the classification head" in err


def test_unknown_task_name(capsys) -> None:
    rc = main(["--tasks", "classify,depth", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: --tasks: unknown task 'depth': choose from classify, detect, segment"


@pytest.fixture(scope="module")
def exportable(shapes_root, tmp_path_factory):
    """A 1-epoch run folder whose detector keeps every box (score threshold 0): detections to compare."""
    out = tmp_path_factory.mktemp("exportable")
    assert (
        main(["--data", str(shapes_root), "--output", str(out), *FAST, "--set", "model.detection.box_score_thresh=0.0"])
        == 0
    )
    return out


def _exported_input(shapes_root):
    """One val image at 48 x 64, another size than the export's example, as the model takes it."""
    import numpy as np

    from tasks.data.images import load_rgb
    from tasks.data.multitask import MultiTaskPipeline

    image = load_rgb(shapes_root / "val" / "00002.png")[:48]
    return MultiTaskPipeline(64, train=False)(
        image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(image.shape[:2], np.uint8)
    )[0][None]


def test_onnx_export_runs_in_onnxruntime_with_all_three_outputs(shapes_root, exportable, tmp_path, capsys) -> None:
    import numpy as np
    import onnxruntime
    from PIL import Image

    from tasks.data.multitask import (
        MultiTaskDataset,
        MultiTaskPipeline,
        collate_multitask,
        load_multitask,
        parse_sources,
    )
    from tasks.multitask import ExportGraph, MultiTaskTask, ServedModel, _load_model

    out = exportable
    target = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(out / "best.pt"), "--format", "onnx", "--output", str(target)]) == 0
    assert "onnxruntime matches eager" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "boxes", "labels", "scores", "masks"]
    model, checkpoint = _load_model(out / "best.pt")
    names = {k: list(v) for k, v in checkpoint["class_names"].items()}
    tensor = _exported_input(shapes_root)
    with torch.inference_mode():
        expected = ExportGraph(model)(tensor)
    got = session.run(None, {"images": tensor.numpy()})
    assert got[4].shape == (1, 4, 48, 64)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want.numpy(), rtol=1e-3, atol=1e-4)
    assert len(got[1]) > 0  # score threshold 0: detections to compare, not an empty list

    # predict serves the exported file alone, with the checkpoint's predictions
    inputs = [str(shapes_root / "val" / name) for name in ("00001.png", "00002.png")]
    entries = {}
    for name, model_file in (("checkpoint", out / "best.pt"), ("onnx", target)):
        folder = tmp_path / f"predict-{name}"
        cam = ["--cam"] if name == "checkpoint" else []  # Grad-CAM of the classification head: eager only
        assert main(["predict", *inputs, "--checkpoint", str(model_file), "--output", str(folder), *cam]) == 0
        entries[name] = json.loads((folder / "predictions.json").read_text())
        assert (folder / "masks" / "00001.png").is_file()
    for eager, exported in zip(entries["checkpoint"], entries["onnx"]):
        assert set(eager) == set(exported) | {"cam"} and set(exported) == {
            "path",
            "image",
            "classify",
            "detect",
            "segment",
        }
        assert eager["cam"]["class"] == eager["classify"][0]["class"]
        with Image.open(tmp_path / "predict-checkpoint" / eager["cam"]["image"]) as heat:
            assert heat.size == (64, 64)  # the image's own size
        assert [c["class"] for c in eager["classify"]] == [c["class"] for c in exported["classify"]]
        for a, b in zip(eager["classify"], exported["classify"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
        key = lambda d: (d["class"], round(d["score"], 3))  # noqa: E731 - detections matched as sets
        assert len(eager["detect"]) == len(exported["detect"])
        for a, b in zip(sorted(eager["detect"], key=key), sorted(exported["detect"], key=key)):
            assert a["class"] == b["class"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a["box"] == pytest.approx(b["box"], abs=1e-2)
    masks = [np.asarray(Image.open(tmp_path / f"predict-{n}" / "masks" / "00002.png")) for n in ("checkpoint", "onnx")]
    assert (masks[0] == masks[1]).mean() > 0.999

    # --quantize int8: the float32 file scores what the eager graph scores; the int8 copy is about a quarter
    argv = ["export", "--checkpoint", str(out / "best.pt"), "--output", str(tmp_path / "q.onnx"), "--quantize", "int8"]
    assert main([*argv, "--data", str(shapes_root), "--calibration-images", "2"]) == 0
    report = capsys.readouterr().out
    values = [float(v) for v in re.findall(r"main \(mean of accuracy, AP, mIoU\) (\d\.\d+)", report)]
    assert len(values) == 2 and re.search(r"change with int8: [+-]\d\.\d{4}", report)
    int8 = tmp_path / "q.int8.onnx"
    assert int8.stat().st_size < 0.4 * (tmp_path / "q.onnx").stat().st_size
    val = load_multitask(parse_sources(shapes_root, list(model.tasks)), "val", class_names=names, train_split="train")
    loader = torch.utils.data.DataLoader(
        MultiTaskDataset(val, MultiTaskPipeline(64, train=False), train=False),
        batch_size=2,
        collate_fn=collate_multitask,
    )
    with torch.inference_mode():
        eager = MultiTaskTask(val, backend="pycocotools").evaluate(
            ServedModel(ExportGraph(model), ExportGraph(model).output_names), loader, torch.device("cpu")
        )
    assert values[0] == pytest.approx(eager["main"], abs=1e-4)
    assert main(["predict", inputs[0], "--checkpoint", str(int8), "--output", str(tmp_path / "predict-int8")]) == 0


@NEEDS_OPENVINO
def test_openvino_export_float32_matches_eager_and_int8_scores_near_it(shapes_root, exportable, tmp_path, capsys):
    import numpy as np

    from tasks.export import Exported, _match_detections, file_mib
    from tasks.multitask import ExportGraph, _load_model

    target = tmp_path / "model.xml"
    argv = ["export", "--checkpoint", str(exportable / "best.pt"), "--format", "openvino", "--output", str(target)]
    assert main([*argv, "--quantize", "int8", "--data", str(shapes_root), "--calibration-images", "2"]) == 0
    report = capsys.readouterr().out
    assert "OpenVINO matches eager" in report and f"wrote {tmp_path / 'model.int8.xml'} (OpenVINO, CPU)" in report
    values = [float(v) for v in re.findall(r"main \(mean of accuracy, AP, mIoU\) (\d\.\d+)", report)]
    assert len(values) == 2 and abs(values[1] - values[0]) <= 0.15  # int8 moves the metric a little, not to chance
    assert file_mib(tmp_path / "model.int8.xml") < 0.4 * file_mib(target)
    model, _ = _load_model(exportable / "best.pt")
    tensor = _exported_input(shapes_root)
    with torch.inference_mode():
        expected = ExportGraph(model)(tensor)
    exported = Exported(target)
    assert exported.metadata["task"] == "multitask"
    logits, boxes, labels, scores, masks = exported(tensor)
    assert masks.shape == (1, 4, 48, 64) and len(boxes) == len(expected[1]) > 0
    np.testing.assert_allclose(logits, expected[0].numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(masks, expected[4].numpy(), rtol=1e-3, atol=1e-4)
    want = [t.numpy() for t in expected[1:4]]
    paired = _match_detections(target, want, [boxes, labels, scores], ("boxes", "labels", "scores"))
    np.testing.assert_allclose(paired["boxes"], want[0], atol=1e-2)
    np.testing.assert_allclose(paired["scores"], want[2], atol=1e-4)


def test_export_of_a_bad_checkpoint_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["export", "--checkpoint", str(bad), "--format", "onnx"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: checkpoint {bad}") and "\n" not in err


def _multitask_set(tmp_path, sides: list[tuple[int, int]]):
    """test_images' random RGB PNGs and masks of classes 0..2 and void (the last mask holds a value 7 that is no
    class), each image also with an image label."""
    from tasks.data.multitask import MultiTaskData, MultiTaskSample
    from tests.test_images import _segmentation_set

    masks = _segmentation_set(tmp_path, sides)
    samples = [MultiTaskSample(s.image, label=index % 2, mask=s.mask) for index, s in enumerate(masks.samples)]
    return MultiTaskData(samples, ("classify", "segment"), {"classify": ["a", "b"], "segment": masks.class_names})


@pytest.mark.parametrize(
    ("sides", "padded"),
    [([(40, 48), (30, 36), (48, 40), (36, 36), (20, 20)], True), ([(36, 36), (40, 40), (20, 20)], False)],
    ids=["padded", "one-size"],
)
def test_the_multitask_training_batch_is_normalised_as_albumentations_normalises_each_image(
    tmp_path, sides, padded
) -> None:
    """The multi-task training pipeline leaves uint8 and the collate normalises the batch at once: images, masks
    and sizes equal the same seeded augmentations followed by albumentations' own Normalize on each image, padded
    as before (zero in normalised values, void in masks)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from tasks.data.multitask import MultiTaskDataset, MultiTaskPipeline, collate_multitask
    from tasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    data = _multitask_set(tmp_path, sides)
    data.samples = data.samples[:-1]  # every mask valid
    options = dict(train=True, hflip=0.5, scale_jitter=0.3, color_jitter=0.3, seed=3)
    ours = MultiTaskPipeline(32, **options)
    reference = MultiTaskPipeline(32, **options)
    reference.compose = A.Compose(
        [*reference.compose.transforms, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_area=1.0),
        seed=3,
    )
    reference.uint8 = False
    items = [MultiTaskDataset(data, ours, train=True)[index] for index in range(len(data.samples))]
    assert all(item["image"].dtype == torch.uint8 for item in items)
    batch = collate_multitask(items)
    want = [MultiTaskDataset(data, reference, train=True)[index] for index in range(len(data.samples))]
    sizes = [tuple(item["image"].shape[-2:]) for item in want]
    assert batch["sizes"] == sizes and (len(set(sizes)) > 1) == padded
    images = torch.stack([F.pad(item["image"], (0, 32 - w, 0, 32 - h)) for item, (h, w) in zip(want, sizes)])
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == images.shape
    assert images.abs().max() > 1.5  # normalised, not in [0, 1]
    torch.testing.assert_close(batch["images"], images, rtol=0, atol=1e-5)
    masks = torch.stack([F.pad(item["mask"], (0, 32 - w, 0, 32 - h), value=255) for item, (h, w) in zip(want, sizes)])
    positions, got = batch["targets"]["segment"]
    assert positions.tolist() == list(range(len(want))) and got.dtype == torch.int64 and torch.equal(got, masks)
    assert batch["targets"]["classify"][1].tolist() == [index % 2 for index in range(len(want))]


def test_the_multitask_decoded_cache_keeps_checked_masks_and_rereads_a_bad_one(tmp_path, monkeypatch, capsys) -> None:
    """Masks go through the decoded cache as checked uint8 arrays: each valid mask is read once and items equal an
    uncached dataset's; a mask with a value that is no class is not kept, so it is read, named and ignored each
    time (its image keeps its other labels), as before."""
    import tasks.data.multitask as multitask
    import tasks.data.segmentation as segmentation
    from tasks.data.images import DecodedCache

    data = _multitask_set(tmp_path, [(20, 24), (16, 16), (12, 20)])
    pipeline = multitask.MultiTaskPipeline(32, train=False)
    expected = [multitask.MultiTaskDataset(data, pipeline, train=False)[index] for index in range(3)]
    assert expected[-1]["mask"] is None and expected[-1]["label"] == 0
    capsys.readouterr()
    reads: list[str] = []
    real = segmentation.read_mask
    monkeypatch.setattr(segmentation, "read_mask", lambda path: reads.append(path.name) or real(path))
    cached = multitask.MultiTaskDataset(data, pipeline, train=False)
    cached.decoded = DecodedCache(2**20)
    for _ in range(3):
        items = [cached[index] for index in range(3)]
        assert items[-1]["mask"] is None and "ignoring mask 2_mask.png" in capsys.readouterr().err.replace(
            f"{tmp_path}/", ""
        )
        for got, want in zip(items, expected):
            assert torch.equal(got["image"], want["image"]) and got["label"] == want["label"]
            for key in ("mask", "original_mask"):
                assert (got[key] is None and want[key] is None) or torch.equal(got[key], want[key])
    assert reads == ["0_mask.png", "1_mask.png", "2_mask.png", "2_mask.png", "2_mask.png"]
    kept = cached.decoded.arrays[str(data.samples[0].mask)]
    assert kept.dtype == np.uint8 and not kept.flags.writeable


def test_a_multitask_mask_of_another_size_than_its_image_is_named_and_ignored(tmp_path, capsys) -> None:
    """The image keeps its other labels, and the warning names the mask and both sizes."""
    from PIL import Image

    from tasks.data.images import DecodedCache
    from tasks.data.multitask import MultiTaskDataset, MultiTaskPipeline

    data = _multitask_set(tmp_path, [(12, 20), (16, 16), (8, 8)])  # the last mask holds a value that is no class
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data.samples[0].mask)
    dataset = MultiTaskDataset(data, MultiTaskPipeline(32, train=False), train=False)
    dataset.decoded = DecodedCache(2**20)
    for _ in range(2):  # not kept: named again on the next read
        item = dataset[0]
        assert item["mask"] is None and item["original_mask"] is None and item["label"] == 0
        assert f"ignoring mask {data.samples[0].mask}: 10x10 px where its image is 20x12 px;" in capsys.readouterr().err
    assert dataset[1]["mask"] is not None


def test_a_run_reads_its_detection_files_once_for_both_splits(shapes_root, monkeypatch) -> None:
    """Training setup reads the train and val splits together: the detection files are read once, and each split
    holds the same images, labels, boxes and masks as reading it alone."""
    import numpy as np

    import tasks.data.multitask as multitask_data
    from tasks.data.multitask import load_multitask, load_multitask_splits, parse_sources

    calls = []
    reader = multitask_data.load_detection_splits

    def counted(*args, **kwargs):
        calls.append(kwargs.get("val_split"))
        return reader(*args, **kwargs)

    monkeypatch.setattr(multitask_data, "load_detection_splits", counted)
    sources = parse_sources(shapes_root, ["classify", "detect", "segment"])
    train, val = load_multitask_splits(sources, "train", "val")
    assert len(calls) == 1
    alone_train = load_multitask(sources, "train", train_split="train")
    alone_val = load_multitask(sources, "val", class_names=alone_train.class_names, train_split="train")
    assert len(calls) == 3  # reading each split alone reads the detection files twice
    for together, alone in ((train, alone_train), (val, alone_val)):
        assert together.class_names == alone.class_names and together.counts == alone.counts
        assert [s.path for s in together.samples] == [s.path for s in alone.samples]
        for a, b in zip(together.samples, alone.samples):
            assert a.label == b.label and a.mask == b.mask
            assert (a.detection is None) == (b.detection is None)
            if a.detection is not None:
                np.testing.assert_array_equal(a.detection.boxes, b.detection.boxes)
                np.testing.assert_array_equal(a.detection.labels, b.detection.labels)
