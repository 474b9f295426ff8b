"""tasks.segment end to end on generated data: both layouts, outputs, eval, predict and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.embedded import shapes_dataset
from tasks.data.segmentation import VOC_SEGMENTATION_CLASSES
from tasks.errors import UserError
from tasks.segment import main

FAST = ["--backbone", "resnet18", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--image-size", "64"]
KEYS = {"mIoU", "per_class_iou", "mDice", "per_class_dice", "pixel_accuracy", "mean_class_accuracy"}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return shapes_dataset(tmp_path_factory.mktemp("shapes"), size=64, train_images=6, val_images=4)


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("segrun")
    assert main(["--data", str(shapes_root), "--output", str(out), *FAST]) == 0
    return out


def _one_line_error(capsys, rc: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def _copy(root, target):
    shutil.copytree(root, target)
    return target


def test_train_writes_the_run_folder(trained, shapes_root) -> None:
    assert {"config.yaml", "last.pt", "best.pt", "metrics.json", "masks", "overlays"} <= {
        p.name for p in trained.iterdir()
    }
    assert {"per_class_iou.png", "confusion_matrix_normalized.png", "results.csv", "results.png"} <= {
        p.name for p in trained.iterdir()
    }
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) >= KEYS
    assert list(metrics["per_class_iou"]) == ["background", "square", "circle", "triangle"]  # classes.txt
    for key in ("mIoU", "mDice", "pixel_accuracy", "mean_class_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_pixels"] == 4 * 64 * 64  # the whole val split, padding excluded
    mask = Image.open(trained / "masks" / "00001.png")
    assert mask.mode == "P" and mask.size == (64, 64)
    assert np.asarray(mask).max() < 4
    assert len(list((trained / "overlays").glob("*.png"))) == 4


def test_eval_reproduces_training_and_writes_every_mask(trained, shapes_root, tmp_path) -> None:
    out = tmp_path / "eval"
    assert (
        main(["eval", "--checkpoint", str(trained / "best.pt"), "--data", str(shapes_root), "--output", str(out)]) == 0
    )
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (out, trained))
    matrix, trained_matrix = np.array(got["confusion_matrix"]), np.array(expected["confusion_matrix"])
    assert (matrix.sum(1) == trained_matrix.sum(1)).all()  # the same pixels of each true class
    # eval runs the backbone folded and fused (fast_inference), training's evaluation the eager model: float
    # rounding may move a pixel whose two best classes tie to the other one (each move changes two cells by 1)
    moved = np.abs(matrix - trained_matrix).sum() // 2
    assert moved <= matrix.sum() // 1000, (matrix, trained_matrix)
    written = {p.name: np.asarray(Image.open(p)) for p in (out / "masks").glob("*.png")}
    assert len(written) == 4
    # The written masks are the predictions the metrics were computed from.
    truth = {name: np.asarray(Image.open(shapes_root / "masks" / "val" / name)) for name in written}
    confusion = np.zeros((4, 4), np.int64)
    for name, predicted in written.items():
        np.add.at(confusion, (truth[name].ravel(), predicted.ravel()), 1)
    assert confusion.tolist() == got["confusion_matrix"]


def test_eval_scores_a_folder_of_predicted_masks_as_it_scores_the_model(trained, shapes_root, tmp_path, capsys) -> None:
    """``eval --predictions masks/`` with no model: the masks a model's eval wrote give that eval's metrics, to the
    pixel; masks of other images in the folder are left out. A folder that lacks a mask, a mask of another size,
    with a value that is no class or with void, in colour or unreadable, is one line naming it; nothing is
    written."""
    evaluated = tmp_path / "eval"
    argv = ["eval", "--data", str(shapes_root)]
    assert main([*argv, "--checkpoint", str(trained / "best.pt"), "--output", str(evaluated)]) == 0
    masks = _copy(evaluated / "masks", tmp_path / "masks")
    Image.new("L", (8, 8)).save(masks / "not-in-val.png")
    capsys.readouterr()
    out = tmp_path / "scored"
    assert main([*argv, "--predictions", str(masks), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "masks/" not in printed  # nothing but the metrics and figures is written
    scored, by_model = (json.loads((d / "metrics.json").read_text()) for d in (out, evaluated))
    assert scored == by_model

    def fails(*needles: str) -> None:
        _one_line_error(capsys, main([*argv, "--predictions", str(masks), "--output", str(tmp_path / "bad")]), *needles)
        assert not (tmp_path / "bad").exists()

    original = np.asarray(Image.open(masks / "00002.png")).copy()
    (masks / "00002.png").unlink()
    fails(str(masks), "1 of the 4", str(masks / "00002.png"))
    Image.fromarray(original[:32]).save(masks / "00002.png")
    fails(str(masks / "00002.png"), "64x32 px", "64x64 px")
    for value, needle in ((9, "values 9"), (255, "void (255)")):
        changed = original.copy()
        changed[0, 0] = value
        Image.fromarray(changed).save(masks / "00002.png")
        fails(str(masks / "00002.png"), needle)
    Image.fromarray(original).convert("RGB").save(masks / "00002.png")  # a colour-coded mask, not class indices
    fails(str(masks / "00002.png"), "RGB image")
    (masks / "00002.png").write_bytes(b"not a png")
    fails(str(masks / "00002.png"), "cannot be read")
    _one_line_error(capsys, main([*argv, "--predictions", str(tmp_path / "none")]), "is not a folder")


def test_predict_writes_masks_overlays_and_class_shares(trained, shapes_root, tmp_path) -> None:
    out = tmp_path / "pred"
    odd = tmp_path / "odd.png"  # a size that is not a multiple of 32
    Image.open(shapes_root / "val" / "00001.png").crop((0, 0, 50, 37)).save(odd)
    twin = tmp_path / "twin" / "00001.png"  # the same name as one in the val folder: its own outputs
    twin.parent.mkdir()
    Image.open(shapes_root / "val" / "00001.png").crop((0, 0, 40, 40)).save(twin)
    assert (
        main(
            [
                "predict",
                str(odd),
                str(shapes_root / "val"),
                str(twin),
                "--checkpoint",
                str(trained / "best.pt"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 6
    assert sum(results[0]["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    assert Image.open(out / "masks" / "odd.png").size == (50, 37)
    assert Image.open(out / "overlays" / "odd.png").size == (50, 37)
    masks = [r["mask"] for r in results]
    assert len(set(masks)) == 6 and results[-1]["mask"] == "masks/00001_png.png"
    for result in results:  # every entry points at its own image's outputs
        with Image.open(result["path"]) as image, Image.open(out / result["mask"]) as mask:
            assert mask.size == image.size and (out / result["overlay"]).is_file()


def test_large_images_are_predicted_and_evaluated_in_tiles(trained, shapes_root, tmp_path, monkeypatch) -> None:
    import tasks.segment
    from tasks.tiles import predict_classes

    windows = []

    def recording(forward, images, *, tile):
        def seen(x):
            windows.append(tuple(x.shape[-2:]))
            return forward(x)

        return predict_classes(seen, images, tile=tile)

    monkeypatch.setattr(tasks.segment, "predict_classes", recording)
    big = tmp_path / "big.png"
    Image.open(shapes_root / "val" / "00001.png").resize((300, 190)).save(big)
    out = tmp_path / "pred"
    argv = ["predict", str(big), "--checkpoint", str(trained / "best.pt"), "--output", str(out)]
    assert main([*argv, "--set", "data.tile_size=64"]) == 0
    assert Image.open(out / "masks" / "big.png").size == (300, 190)
    assert max(windows) == (64, 64) and len(windows) > 1  # never the whole 320×192 padded image
    windows.clear()
    assert main(["eval", "--checkpoint", str(trained / "best.pt"), "--data", str(shapes_root), "--output",
                 str(tmp_path / "eval"), "--set", "data.tile_size=64"]) == 0  # fmt: skip
    assert windows and set(windows) == {(64, 64)}  # the 64 px val images fit one tile each
    assert main([*argv, "--set", "data.tile_size=20"]) == 2


def voc_from_shapes(root, target):
    """A VOC2012-style segmentation root: JPEGs, palette PNG masks with a void border round each shape."""
    from scipy import ndimage

    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (target / folder).mkdir(parents=True)
    for split in ("train", "val"):
        ids = []
        for image in sorted((root / split).glob("*.png")):
            image_id = f"{split}_{image.stem}"
            ids.append(image_id)
            Image.open(image).convert("RGB").save(target / "JPEGImages" / f"{image_id}.jpg", quality=95)
            mask = np.asarray(Image.open(root / "masks" / split / image.name)).copy()
            edge = ndimage.binary_dilation(mask > 0) & ~ndimage.binary_erosion(mask > 0)
            mask[edge] = 255
            palette = Image.fromarray(mask, mode="P")
            palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252)
            palette.save(target / "SegmentationClass" / f"{image_id}.png")
        (target / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return target


def test_voc_layout_end_to_end(shapes_root, tmp_path) -> None:
    root = voc_from_shapes(shapes_root, tmp_path / "VOC2012")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == list(VOC_SEGMENTATION_CLASSES)
    void = sum(int((np.asarray(Image.open(p)) == 255).sum()) for p in (root / "SegmentationClass").glob("val_*.png"))
    assert void > 0 and metrics["num_pixels"] == 4 * 64 * 64 - void  # void pixels are not scored
    assert metrics["per_class_iou"]["aeroplane"] is not None  # index 1 (the squares) under VOC's names
    assert metrics["per_class_iou"]["person"] is None or metrics["per_class_iou"]["person"] == 0.0
    assert (out / "masks" / "val_00001.png").is_file()


def test_voc_trainaug_reads_the_augmented_masks_where_voc_has_none(shapes_root, tmp_path) -> None:
    """The 10,582-image "trainaug" protocol: ImageSets/Segmentation/trainaug.txt lists images whose masks are in
    SegmentationClassAug/ (SBD's, as PNGs of class indices) where SegmentationClass/ has none; VOC's own mask wins
    where both exist; trained with --set data.train_split=trainaug."""
    from tasks.data.segmentation import load_segmentation

    root = voc_from_shapes(shapes_root, tmp_path / "VOC2012")
    aug = root / "SegmentationClassAug"
    aug.mkdir()
    ids = []
    for mask in sorted((root / "SegmentationClass").glob("train_*.png")):
        ids.append(mask.stem)
        indices = np.asarray(Image.open(mask)).copy()
        Image.fromarray(indices, "L").save(aug / mask.name)  # the augmented set's form: grayscale indices
        if len(ids) % 2:
            mask.unlink()  # an SBD-only image: its mask is in the augmented folder alone
    (root / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("\n".join(ids) + "\n")
    data = load_segmentation(root, "trainaug", classes=None)
    assert [s.image_id for s in data.samples] == ids
    for index, sample in enumerate(data.samples):
        assert sample.mask.parent.name == ("SegmentationClassAug" if index % 2 == 0 else "SegmentationClass")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST, "--set", "data.train_split=trainaug"]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["per_class_iou"]) == list(VOC_SEGMENTATION_CLASSES)


def test_a_timm_backbone_without_a_stride_2_map_trains_and_one_that_cannot_serve_is_one_line(
    shapes_root, tmp_path, capsys
) -> None:
    """A ConvNeXt starts at stride 4: the U-Net reads c2..c5 (it stopped with a traceback before). A ViT's blocks
    are all at stride 16: its simple pyramid gives c2..c5 and it trains (it stopped with the one line below
    before). A patch size that is not a power of two (DINOv2's 14) has no pyramid, only c5: one line says what the
    backbone returns and what the U-Net reads."""
    for backbone in ("timm:convnext_atto", "timm:vit_tiny_patch16_224"):
        out = tmp_path / backbone.replace(":", "-")
        args = [*FAST, "--backbone", backbone, "--set", "train.max_iters_per_epoch=1"]
        assert main(["--data", str(shapes_root), "--output", str(out), *args]) == 0
        assert set(json.loads((out / "metrics.json").read_text())) >= KEYS
    argv = ["--data", str(shapes_root), "--output", str(tmp_path / "dino"), *FAST]
    rc = main([*argv, "--backbone", "timm:vit_small_patch14_dinov2"])
    _one_line_error(capsys, rc, "the backbone returns c5 (stride 14)", "U-Net reads c1")


def test_images_and_masks_folders_with_sub_folders(shapes_root, tmp_path) -> None:
    root = tmp_path / "generic"
    for split in ("train", "val"):
        for image in sorted((shapes_root / split).glob("*.png")):
            group = "even" if int(image.stem) % 2 == 0 else "odd"
            for kind, source in (("images", image), ("masks", shapes_root / "masks" / split / image.name)):
                (root / kind / split / group).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, root / kind / split / group / image.name)
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST, "--set", "data.classes=[bg,sq,ci,tr]"]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["per_class_iou"]) == ["bg", "sq", "ci", "tr"]
    assert (out / "masks" / "odd" / "00001.png").is_file() and (out / "masks" / "even" / "00002.png").is_file()


def test_mask_of_another_size(shapes_root, tmp_path, capsys) -> None:
    root = _copy(shapes_root, tmp_path / "data")
    bad = root / "masks" / "train" / "00002.png"
    Image.open(bad).resize((32, 32)).save(bad)
    _one_line_error(
        capsys, main(["--data", str(root), *FAST, "--output", str(tmp_path / "r")]), str(bad), "32x32", "64x64"
    )


def test_rgb_mask(shapes_root, tmp_path, capsys) -> None:
    root = _copy(shapes_root, tmp_path / "data")
    bad = root / "masks" / "val" / "00003.png"
    Image.open(bad).convert("RGB").save(bad)
    _one_line_error(capsys, main(["--data", str(root), *FAST, "--output", str(tmp_path / "r")]), str(bad), "RGB")


def test_missing_mask(shapes_root, tmp_path, capsys) -> None:
    root = _copy(shapes_root, tmp_path / "data")
    (root / "masks" / "train" / "00004.png").unlink()
    rc = main(["--data", str(root), *FAST, "--output", str(tmp_path / "r")])
    _one_line_error(capsys, rc, str(root / "masks" / "train" / "00004.png"), "does not exist")


def test_mask_values_outside_the_classes_are_skipped_and_counted(shapes_root, tmp_path, capsys) -> None:
    root = _copy(shapes_root, tmp_path / "data")
    bad = root / "masks" / "val" / "00002.png"
    values = np.asarray(Image.open(bad)).copy()
    values[:4, :4] = 7  # not a class (0..3) and not void
    Image.fromarray(values).save(bad)
    out = tmp_path / "r"
    assert main(["--data", str(root), *FAST, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipping {bad}" in err and "7" in err
    assert json.loads((out / "metrics.json").read_text())["num_pixels"] == 3 * 64 * 64


def test_missing_split_and_checkpoint_of_another_task(shapes_root, trained, tmp_path, capsys) -> None:
    rc = main(["--data", str(shapes_root), "--val-split", "test", *FAST, "--output", str(tmp_path / "r")])
    _one_line_error(capsys, rc, "no split 'test'")
    from tasks.classify import main as classify_main

    rc = classify_main(["eval", "--checkpoint", str(trained / "best.pt"), "--data", str(shapes_root)])
    _one_line_error(capsys, rc, "'segment' model, not a 'classify' model")


def test_yolo_segmentation_data_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    """An Ultralytics segmentation data YAML trains, evaluates on its masks drawn from the polygons, and names its
    classes after background; `--format yolo` reads the folder the same way."""
    from tests.test_data_yolo import NAMES, polygon_set

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = polygon_set(tmp_path / "yolo", splits=(("train", 6), ("val", 4)))
    out = tmp_path / "run"
    assert main(["--data", str(root / "data.yaml"), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == ["background", *NAMES]
    assert metrics["num_pixels"] == 4 * 48 * 64
    assert "classes (dataset file" in capsys.readouterr().out
    evaluated = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(root), "--format", "yolo"]
    assert main([*argv, "--output", str(evaluated), "--image-size", "64"]) == 0
    assert json.loads((evaluated / "metrics.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)


def test_coco_polygons_become_semantic_masks(tmp_path, monkeypatch) -> None:
    """A COCO root without masks/: polygons and RLEs are rasterised once into the cache, larger instances first."""
    from pycocotools import mask as mask_utils

    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "val" / "a.png")
    crowd = np.zeros((40, 60), np.uint8, order="F")
    crowd[30:40, 50:60] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    annotations = [
        {
            "id": 1,
            "image_id": 7,
            "category_id": 5,
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
            "area": 400,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 7,
            "category_id": 9,
            "segmentation": [[0, 0, 40, 0, 40, 20, 0, 20]],
            "area": 800,
            "iscrowd": 0,
        },
        {"id": 3, "image_id": 7, "category_id": 5, "segmentation": rle, "area": 100, "iscrowd": 1},
        # uncompressed RLE (column-major run lengths): rows 0-4 of columns 55-59 are road
        {"id": 4, "image_id": 7, "category_id": 9, "area": 25, "iscrowd": 0,
         "segmentation": {"size": [40, 60], "counts": [55 * 40] + [5, 35] * 4 + [5, 35]}},
    ]  # fmt: skip
    document = {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40}],
        "annotations": annotations,
        "categories": [{"id": 9, "name": "road"}, {"id": 5, "name": "car"}],
    }
    (root / "annotations" / "instances_val.json").write_text(json.dumps(document))
    data = load_segmentation(root, "val", classes=None)
    assert data.class_names == ["background", "car", "road"]  # category-id order: 5 then 9
    mask = np.asarray(Image.open(data.samples[0].mask))
    assert mask.shape == (40, 60)
    assert mask[5, 35] == 2 and mask[25, 5] == 0  # road's polygon, and outside every instance
    assert mask[15, 20] == 1  # the smaller car is drawn over the larger road
    assert (mask[30:40, 50:60] == 255).all()  # crowd is void
    assert (mask[0:5, 55:60] == 2).all() and mask[5, 57] == 0  # the uncompressed RLE
    # the decoding written by hand before pycocotools' annToMask did it: the same mask
    expected = np.zeros((40, 60), np.uint8)
    for a in sorted(annotations, key=lambda a: -a["area"]):
        segmentation = a["segmentation"]
        if isinstance(segmentation, list):
            decoded = mask_utils.merge(mask_utils.frPyObjects(segmentation, 40, 60))
        elif isinstance(segmentation["counts"], list):
            decoded = mask_utils.frPyObjects(segmentation, 40, 60)
        else:
            decoded = segmentation
        expected[mask_utils.decode(decoded).astype(bool)] = 255 if a["iscrowd"] else {5: 1, 9: 2}[a["category_id"]]
    np.testing.assert_array_equal(mask, expected)
    again = load_segmentation(root, "val", classes=None)  # read back from the cache
    assert again.samples[0].mask == data.samples[0].mask


def test_a_valid_split_stands_in_for_a_missing_val(shapes_root, tmp_path, capsys) -> None:
    """Roboflow's exports name the evaluation split valid: without a val split it is evaluated on, with a note."""
    root = _copy(shapes_root, tmp_path / "data")
    (root / "val").rename(root / "valid")
    (root / "masks" / "val").rename(root / "masks" / "valid")
    (root / "annotations" / "instances_val.json").rename(root / "annotations" / "instances_valid.json")
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert "has no 'val' split: evaluating on its 'valid' split" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["num_pixels"] == 4 * 64 * 64
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(p.name for p in (root / "valid").iterdir())


def test_a_roboflow_coco_export_gives_the_masks_of_its_coco_file_without_the_umbrella(tmp_path, monkeypatch, capsys):
    """Roboflow's COCO export (<split>/_annotations.coco.json, valid for val, the dataset's name as category 0 and
    every other category's supercategory) draws the same masks as the same polygons in COCO 2017's layout, with
    the same classes: the umbrella category is no class."""
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    polygons = {"car": [[10, 10, 30, 10, 30, 30, 10, 30]], "road": [[0, 0, 40, 0, 40, 20, 0, 20]]}
    document = {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40}],
        "annotations": [
            {"id": i, "image_id": 7, "category_id": cid, "segmentation": polygons[name], "area": area, "iscrowd": 0}
            for i, (cid, name, area) in enumerate(((5, "car", 400), (9, "road", 800)), 1)
        ],
        "categories": [{"id": 9, "name": "road"}, {"id": 5, "name": "car"}],
    }
    plain = tmp_path / "coco"
    (plain / "annotations").mkdir(parents=True)
    (plain / "val").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(plain / "val" / "a.png")
    (plain / "annotations" / "instances_val.json").write_text(json.dumps(document))
    export = tmp_path / "export"
    shutil.copytree(plain / "val", export / "valid")
    for category in document["categories"]:
        category["supercategory"] = "streets"
    document["categories"].insert(0, {"id": 0, "name": "streets", "supercategory": "none"})
    (export / "valid" / "_annotations.coco.json").write_text(json.dumps(document))

    expected = load_segmentation(plain, "val", classes=None)
    data = load_segmentation(export, "val", classes=None)
    out = capsys.readouterr().out
    assert "has no 'val' split: evaluating on its 'valid' split" in out and "category 0 ('streets')" in out
    assert data.class_names == expected.class_names == ["background", "car", "road"]
    drawn, reference = (np.asarray(Image.open(d.samples[0].mask)) for d in (data, expected))
    assert set(np.unique(drawn)) == {0, 1, 2}
    np.testing.assert_array_equal(drawn, reference)


def test_images_and_masks_without_split_folders_hold_out_a_fifth_by_hash(shapes_root, tmp_path, capsys) -> None:
    """images/ beside masks/ with no split folders: a fifth of the images, those of the smallest SHA-1 of their
    path under the root, are evaluated on; eval of the checkpoint scores the same ones again."""
    import hashlib

    root = tmp_path / "flat"
    for kind, source in (("images", ""), ("masks", "masks")):
        (root / kind).mkdir(parents=True)
        for split in ("train", "val"):
            for path in sorted((shapes_root / source / split).glob("*.png")):
                shutil.copy(path, root / kind / f"{split}-{path.name}")
    shutil.copy(shapes_root / "classes.txt", root)
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert "holding out 20% for validation (2 of 10 images" in capsys.readouterr().out
    names = sorted(
        (p.name for p in (root / "images").iterdir()), key=lambda n: hashlib.sha1(f"images/{n}".encode()).hexdigest()
    )
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(names[:2])
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["num_pixels"] == 2 * 64 * 64
    evaluated = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(root), "--output", str(evaluated)]
    assert main([*argv, "--image-size", "64"]) == 0
    assert json.loads((evaluated / "metrics.json").read_text())["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-6)


@pytest.mark.parametrize("tool", ["cvat", "label-studio"])
def test_coco_exports_of_one_subset_give_train_and_val_masks(tmp_path, monkeypatch, capsys, tool) -> None:
    """annotations/instances_default.json with images/ (CVAT's COCO export of a task without subsets), or
    result.json beside images/ with Windows names (Label Studio's): the masks of its polygons, a fifth of the
    images held out for val, the rest trained on."""
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / tool
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(5):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / f"{i}.png")
        name = f"{i}.png" if tool == "cvat" else f"images\\{i}.png"
        images.append({"id": i + 1, "file_name": name, "width": 60, "height": 40})
        square = [10 + i, 10, 30 + i, 10, 30 + i, 30, 10 + i, 30]
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": [square],
                            "area": 400, "iscrowd": 0})  # fmt: skip
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
    written = root / ("annotations/instances_default.json" if tool == "cvat" else "result.json")
    written.parent.mkdir(exist_ok=True)
    written.write_text(json.dumps(document))
    train = load_segmentation(root, "train", classes=None)
    val = load_segmentation(root, "val", classes=None)
    assert "holding out 20% for validation (1 of 5 images" in capsys.readouterr().out
    assert train.class_names == val.class_names == ["background", "box"]
    assert sorted(s.image.name for s in train.samples + val.samples) == [f"{i}.png" for i in range(5)]
    assert len(val.samples) == 1
    for sample in train.samples + val.samples:
        i = int(sample.image.stem)
        mask = np.asarray(Image.open(sample.mask))
        assert mask[20, 20 + i] == 1 and mask[5, 5] == 0 and (mask == 1).sum() == 400


COLOURS = {"background": (0, 0, 0), "square": (250, 50, 83), "circle": (36, 179, 83), "triangle": (0, 0, 255)}


def _paint(mask_path, target) -> np.ndarray:
    """The mask's class indices painted in COLOURS, saved at ``target``; returns the indices."""
    indices = np.asarray(Image.open(mask_path))
    palette = np.array(list(COLOURS.values()), np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(palette[indices]).save(target)
    return indices


def test_cvats_colour_coded_masks_train_through_their_labelmap(shapes_root, tmp_path, monkeypatch, capsys) -> None:
    """CVAT's Segmentation mask export: VOC's layout with ImageSets/Segmentation/default.txt, RGB masks in the
    colours of labelmap.txt. The masks read as the class indices they were painted from, val is held out of
    the one subset, and a colour the map does not list is one line naming the mask and the colour."""
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cvat"
    (root / "JPEGImages").mkdir(parents=True)
    ids, painted = [], {}
    for split in ("train", "val"):
        for image in sorted((shapes_root / split).glob("*.png")):
            image_id = f"{split}_{image.stem}"
            ids.append(image_id)
            Image.open(image).convert("RGB").save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            target = root / "SegmentationClass" / f"{image_id}.png"
            painted[image_id] = _paint(shapes_root / "masks" / split / image.name, target)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(ids) + "\n")
    labelmap = "# label:color_rgb:parts:actions\n" + "".join(f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in COLOURS.items())
    (root / "labelmap.txt").write_text(labelmap)

    train = load_segmentation(root, "train", classes=None)
    val = load_segmentation(root, "val", classes=None)
    assert train.class_names == val.class_names == list(COLOURS)
    assert len(train.samples) == 8 and len(val.samples) == 2
    for sample in train.samples + val.samples:
        np.testing.assert_array_equal(np.asarray(Image.open(sample.mask)), painted[sample.image_id])
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == list(COLOURS) and metrics["num_pixels"] == 2 * 64 * 64

    bad = root / "SegmentationClass" / f"{ids[0]}.png"
    pixels = np.asarray(Image.open(bad)).copy()
    pixels[0, 0] = (1, 2, 3)
    Image.fromarray(pixels).save(bad)
    rc = main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST])
    _one_line_error(capsys, rc, str(bad), "1 pixel(s) of colour (1, 2, 3)", "labelmap.txt does not list")


def test_rgb_masks_with_a_class_dict_csv_read_as_their_classes(shapes_root, tmp_path, monkeypatch) -> None:
    """CamVid's layout: RGB masks beside a class_dict.csv of name,r,g,b; the splits keep their own folders."""
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "camvid"
    painted = {}
    for split in ("train", "val"):
        for image in sorted((shapes_root / split).glob("*.png")):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / "images" / split / image.name)
            painted[split, image.stem] = _paint(
                shapes_root / "masks" / split / image.name, root / "masks" / split / image.name
            )
    rows = "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in COLOURS.items())
    (root / "class_dict.csv").write_text("name,r,g,b\n" + rows)
    for split in ("train", "val"):
        data = load_segmentation(root, split, classes=None)
        assert data.class_names == list(COLOURS) and len(data.samples) == {"train": 6, "val": 4}[split]
        for sample in data.samples:
            np.testing.assert_array_equal(np.asarray(Image.open(sample.mask)), painted[split, sample.image_id])
    (root / "class_dict.csv").write_text("name,r,g,b\nbackground,0,0,0\nsquare,0,0,0\n")
    with pytest.raises(UserError, match="gives two classes the same colour"):
        load_segmentation(root, "val", classes=None)
    (root / "class_dict.csv").write_text("name,r,g,b\nbackground,0,0\n")
    with pytest.raises(UserError, match=r"class_dict.csv, line 2: expected 'name,r,g,b'"):
        load_segmentation(root, "val", classes=None)


def _label_image(path, values, *, rgb=False) -> np.ndarray:
    """A 24 × 32 image (RGB noise) or mask (L): rows of ``values`` in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.resize(np.asarray(values, np.uint8), 24)[:, None].repeat(32, axis=1)
    if rgb:
        Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (24, 32, 3), np.uint8)).save(path)
    else:
        Image.fromarray(rows, "L").save(path)
    return rows


def _as_read(sample, num_classes: int) -> np.ndarray:
    """A sample's mask as the dataset reads it: its file's values looked up in ``sample.values`` where it has them."""
    from tasks.data.images import DecodedCache
    from tasks.data.segmentation import checked_mask

    mask = checked_mask(DecodedCache(), sample.mask, num_classes, values=sample.values)
    assert not isinstance(mask, str), mask
    return mask


@pytest.mark.parametrize("class_file", ["objectInfo150.txt", "objectInfo150.csv"])
def test_ade20k_as_downloaded_scores_its_classes_and_voids_other_objects(tmp_path, monkeypatch, class_file) -> None:
    """ADEChallengeData2016: images/ and annotations/ under training/ and validation/, the names in objectInfo150;
    a mask's 0 ("other objects") is void and class k is k - 1 (mmsegmentation's reduce_zero_label)."""
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ADEChallengeData2016"
    truth = {}
    for split, names in (("training", ["a", "b", "c"]), ("validation", ["d", "e"])):
        for i, name in enumerate(names):
            image = f"ADE_{split[:5]}_{name}"
            _label_image(root / "images" / split / f"{image}.jpg", [0], rgb=True)
            truth[image] = _label_image(root / "annotations" / split / f"{image}.png", [0, 1, 2, 3][i:] + [0])
    if class_file.endswith(".txt"):
        lines = ["Idx\tRatio\tTrain\tVal\tName", "1\t0.15\t11664\t1172\twall", "2\t0.10\t6046\t612\tbuilding, edifice"]
        lines.append("3\t0.09\t8265\t796\tsky")
    else:
        lines = ["Idx,Ratio,Train,Val,Stuff,Name", '1,0.15,11664,1172,1,"wall"', '2,0.10,6046,612,1,"building;edifice"']
        lines.append('3,0.09,8265,796,1,"sky"')
    (root / class_file).write_text("\n".join(lines) + "\n")
    for split, count in (("train", 3), ("val", 2)):
        data = load_segmentation(root, split, classes=None)
        assert data.class_names == ["wall", "building", "sky"]
        assert len(data.samples) == count
        for sample in data.samples:
            expected = np.where(truth[sample.image_id] == 0, 255, truth[sample.image_id].astype(int) - 1)
            assert sample.mask.parent == root / "annotations" / ("training" if split == "train" else "validation")
            np.testing.assert_array_equal(_as_read(sample, 3), expected)
    assert not (tmp_path / "cache").exists()  # looked up as they load, not converted first


def _mapillary(root: Path, version: str, labels: list[dict]) -> dict[str, np.ndarray]:
    """A Mapillary Vistas layout of ``version`` (its config and labels folder): palette PNG masks of label ids."""
    config, folder = {
        "v1.2": ("config_v1.2.json", "v1.2/labels"),
        "v2.0": ("config_v2.0.json", "v2.0/labels"),
        "1.1": ("config.json", "labels"),
    }[version]
    (root / config).parent.mkdir(parents=True, exist_ok=True)
    (root / config).write_text(json.dumps({"labels": labels, "version": version}))
    truth = {}
    for split, ids in (("training", ["a", "b", "c"]), ("validation", ["d", "e"])):
        for i, name in enumerate(ids):
            _label_image(root / split / "images" / f"{name}.jpg", [0], rgb=True)
            rows = np.resize(np.arange(i, i + len(labels)) % len(labels), 24)[:, None].repeat(32, axis=1)
            mask = Image.fromarray(rows.astype(np.uint8), "P")
            mask.putpalette([v for k in range(256) for v in (k, 255 - k, 7)])
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            mask.save(root / split / folder / f"{name}.png")
            truth[name] = rows
    return truth


def test_mapillary_vistas_reads_its_config_and_voids_what_the_benchmark_does_not_score(
    tmp_path, monkeypatch, capsys
) -> None:
    """Mapillary Vistas 2.0's layout: the v1.2 labels (config_v1.2.json) where both label sets are present (v2.0's
    when --data names config_v2.0.json), else v2.0's; the classes are the config's labels to evaluate, by readable
    name; an unscored label is void, read from the palette PNGs' ids as they load (no converted copies); trained end
    to end; a broken config is one line."""
    from tasks.data.images import DecodedCache
    from tasks.data.public_sets import public_set
    from tasks.data.segmentation import checked_mask, load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "mapillary"
    v12 = [
        {"name": "animal--bird", "readable": "Bird", "evaluate": True},
        {"name": "void--unlabeled", "readable": "Unlabeled", "evaluate": False},
        {"name": "construction--flat--road", "readable": "Road", "evaluate": True},
        {"name": "nature--sky", "readable": "Sky", "evaluate": True},
    ]
    v20 = [{"name": "construction--flat--road", "readable": "Road"}, {"name": "nature--sky", "readable": "Sky"}]
    truth = _mapillary(root, "v1.2", v12)
    _mapillary(root, "v2.0", v20)
    for split, count in (("train", 3), ("val", 2)):
        data = load_segmentation(root, split, classes=None)
        assert data.class_names == ["Bird", "Road", "Sky"] and len(data.samples) == count
        for sample in data.samples:
            assert sample.mask.parent == root / ("training" if split == "train" else "validation") / "v1.2/labels"
            expected = np.array([0, 255, 1, 2])[truth[sample.image_id]]  # label 1 (Unlabeled) void, then shifted
            np.testing.assert_array_equal(checked_mask(DecodedCache(), sample.mask, 3, values=sample.values), expected)
    assert not (tmp_path / "cache").exists()  # nothing converted
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == ["Bird", "Road", "Sky"]
    assert metrics["num_pixels"] == sum(int((truth[name] != 1).sum()) for name in ("d", "e"))  # void left out
    chosen = load_segmentation(root / "config_v2.0.json", "val", classes=None)  # --data names the label set
    assert chosen.class_names == ["Road", "Sky"] and chosen.samples[0].mask.parent.parent.name == "v2.0"
    assert main(["--data", str(root / "config_v2.0.json"), "--output", str(tmp_path / "v2"), *FAST]) == 0
    assert list(json.loads((tmp_path / "v2" / "metrics.json").read_text())["per_class_iou"]) == ["Road", "Sky"]
    shutil.rmtree(root / "training" / "v1.2")
    shutil.rmtree(root / "validation" / "v1.2")
    assert load_segmentation(root, "train", classes=None).class_names == ["Road", "Sky"]  # evaluate missing: scored
    first = tmp_path / "vistas-1.1"  # the first releases: config.json with <split>/labels/
    _mapillary(first, "1.1", v20)
    assert load_segmentation(first, "val", classes=None).class_names == ["Road", "Sky"]
    (first / "config.json").write_text('{"model": "another tool\'s config"}')  # no labels: not Mapillary's
    assert public_set(first) is None
    (root / "config_v2.0.json").write_text('{"labels": "road, sky"}')
    capsys.readouterr()
    rc = main(["--data", str(root), "--output", str(tmp_path / "bad"), *FAST])
    _one_line_error(capsys, rc, f"Mapillary Vistas config {root / 'config_v2.0.json'}: expected JSON with a labels")


def test_coco_stuff_reads_its_182_ids_as_the_171_classes_its_masks_use(tmp_path, monkeypatch) -> None:
    """COCO-Stuff 164k: images/{train2017,val2017}/ with annotations/ of stuffthingmaps (COCO ids minus one): the
    171 classes in mmsegmentation's order, an unused id (11, COCO's 'street sign') and 255 void, the ids after an
    unused one shifted down (hand-computed: 12 'stop sign' is class 11, 91 'banner' class 80, 181 'wood' class
    170), looked up as the masks load; mmsegmentation's converted _labelTrainIds.png read as it is; trained."""
    from tasks.data.images import DecodedCache
    from tasks.data.public_sets import COCO_STUFF_CLASSES
    from tasks.data.segmentation import checked_mask, load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "coco_stuff164k"
    ids = [0, 11, 12, 91, 181, 255]
    for split, names in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        for name in names:
            _label_image(root / "images" / split / f"{name}.jpg", [0], rgb=True)
            _label_image(root / "annotations" / split / f"{name}.png", ids)
    converted = root / "annotations" / "train2017" / "000000000025_labelTrainIds.png"
    _label_image(converted, [3, 170, 255])
    data = load_segmentation(root, "train", classes=None)
    assert data.class_names == list(COCO_STUFF_CLASSES) and len(data.class_names) == 171
    assert data.class_names[11] == "stop sign" and data.class_names[80] == "banner" and data.class_names[170] == "wood"
    first, second = data.samples
    mapped = np.array([0, 255, 11, 80, 170, 255])[np.resize(np.arange(6), 24)][:, None].repeat(32, axis=1)
    np.testing.assert_array_equal(checked_mask(DecodedCache(), first.mask, 171, values=first.values), mapped)
    assert second.mask == converted and second.values is None
    assert load_segmentation(root, "val", classes=None).samples[0].image_id == "000000000139"
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_class_iou"]) == 171 and metrics["num_pixels"] == 24 * 32 * 4 // 6


def test_cityscapes_as_downloaded_trains_on_its_19_train_ids(tmp_path, monkeypatch, capsys) -> None:
    """leftImg8bit/ and gtFine/ by city: labelIds masks become the benchmark's train ids (the table of
    cityscapesscripts' labels.py, written out here by hand), and a labelTrainIds mask beside is read as it is."""
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cityscapes"
    train_id = {0: 255, 1: 255, 7: 0, 8: 1, 9: 255, 11: 2, 24: 11, 26: 13, 31: 16, 33: 18}  # labels.py's trainId
    label_ids = {}
    for split, city, frames in (("train", "aachen", 3), ("train", "bochum", 1), ("val", "lindau", 2)):
        for frame in range(frames):
            stem = f"{city}_{frame:06d}_000019"
            _label_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", [0], rgb=True)
            ids = list(train_id)[frame * 3 : frame * 3 + 4]
            label_ids[split, f"{city}/{stem}"] = _label_image(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids
            )
            _label_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", [0], rgb=True)
    ready = _label_image(
        root / "gtFine" / "train" / "bochum" / "bochum_000000_000019_gtFine_labelTrainIds.png", [5, 255]
    )
    from tasks.data.segmentation import load_segmentation

    data = load_segmentation(root, "train", classes=None)
    assert data.class_names[:3] == ["road", "sidewalk", "building"] and len(data.class_names) == 19
    assert data.class_names[13] == "car" and data.class_names[18] == "bicycle"
    assert [s.image_id for s in data.samples] == [f"aachen/aachen_{i:06d}_000019" for i in range(3)] + [
        "bochum/bochum_000000_000019"
    ]
    as_train_ids = np.vectorize(train_id.get)
    for sample in data.samples:
        expected = ready if sample.image_id.startswith("bochum") else as_train_ids(label_ids["train", sample.image_id])
        assert sample.mask.parent.parent == root / "gtFine" / "train"  # the files themselves, none converted
        np.testing.assert_array_equal(_as_read(sample, 19), expected)
    assert not (tmp_path / "cache").exists()
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_class_iou"]) == 19
    scored = sum(int((as_train_ids(ids) != 255).sum()) for (split, _), ids in label_ids.items() if split == "val")
    assert metrics["num_pixels"] == scored  # every val pixel but the void ones


def test_the_summary_names_every_class_up_to_20_and_the_lowest_and_highest_beyond() -> None:
    from tasks.segment import per_class_line

    few = {"background": 0.9, "road": None, "car": 0.25}
    assert per_class_line(few) == "per-class IoU: background 0.900, road n/a, car 0.250"
    many = {f"c{i}": (None if i % 10 == 3 else i / 200) for i in range(150)}  # 135 scored: c0 0.000 .. c149 0.745
    assert per_class_line(many) == (
        "per-class IoU of 135 scored class(es) of 150 (all in metrics.json): "
        "lowest c0 0.000, c1 0.005, c2 0.010, c4 0.020, c5 0.025; "
        "highest c149 0.745, c148 0.740, c147 0.735, c146 0.730, c145 0.725"
    )
    some = {f"c{i}": (i / 10 if i < 3 else None) for i in range(30)}
    assert (
        per_class_line(some)
        == "per-class IoU of 3 scored class(es) of 30 (all in metrics.json): c0 0.000, c1 0.100, c2 0.200"
    )


def test_a_broken_ade20k_class_list_is_one_line(tmp_path, capsys) -> None:
    root = tmp_path / "ade"
    _label_image(root / "images" / "training" / "a.jpg", [0], rgb=True)
    _label_image(root / "annotations" / "training" / "a.png", [0, 1])
    shutil.copytree(root / "images" / "training", root / "images" / "validation")
    shutil.copytree(root / "annotations" / "training", root / "annotations" / "validation")
    listing = root / "objectInfo150.txt"
    for lines, problem in (
        (["Idx\tName", "1\twall", "3\tsky"], "expected indices 1..K (K ≥ 2) with no gaps, got 2 rows"),
        (["Idx\tName", "1\twall", "wall"], "line 3: expected a new index from 1 and a name, got 'wall'"),
    ):
        listing.write_text("\n".join(lines) + "\n")
        rc = main(["--data", str(root), "--output", str(tmp_path / "run"), *FAST])
        _one_line_error(capsys, rc, str(listing), problem)
        assert not (tmp_path / "run").exists()


def test_labelme_polygons_draw_the_masks_a_coco_file_of_the_same_polygons_draws(tmp_path, monkeypatch, capsys) -> None:
    """LabelMe's JSON beside each image (one flat folder, val held out): its polygons and rectangles give the
    same masks as the COCO mask path gives for the same polygons in a COCO file; a circle is its disc and an
    __ignore__ shape is void; trained end to end."""
    from tasks.data.coco_masks import coco_semantic_masks
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root, coco = tmp_path / "labelme", tmp_path / "coco"
    root.mkdir()
    (coco / "annotations").mkdir(parents=True)
    (root / "labels.txt").write_text("__ignore__\n_background_\nroad\ncar\nsign\n")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(10):
        name = f"street{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(root / name)
        road = [[0, 20 + i % 3], [50, 20 + i % 3], [50, 40], [0, 40]]
        car = (rng.uniform(5, 35, (5, 2)) * [1.2, 0.9]).round(2).tolist()
        shapes = [
            {"label": "road", "points": road, "shape_type": "polygon"},
            {"label": "car", "points": car, "shape_type": "polygon"},
            {"label": "sign", "points": [[40.0, 8.0], [40.0, 12.0]], "shape_type": "circle"},
            {"label": "__ignore__", "points": [[0, 0], [6, 4]], "shape_type": "rectangle"},
        ]
        height = 40 if i else 99  # a stale imageHeight: the shapes are in the image's own pixels
        document = {"shapes": shapes, "imagePath": name, "imageHeight": height, "imageWidth": 50, "imageData": None}
        (root / f"street{i}.json").write_text(json.dumps(document))
        images.append({"id": i, "file_name": name, "width": 50, "height": 40})
        for label, points in ((1, road), (2, car)):  # the same polygons as COCO annotations
            flat = np.array(points, float).ravel().tolist()
            xs, ys = flat[0::2], flat[1::2]
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label, "area": area,
                                "segmentation": [flat], "bbox": [0, 0, 1, 1], "iscrowd": 0})  # fmt: skip
    categories = [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}]
    (coco / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    shutil.copytree(root, coco / "val", ignore=shutil.ignore_patterns("*.json", "*.txt"))
    _, reference_masks, _ = coco_semantic_masks(coco, "val")
    train = load_segmentation(root, "train", classes=None)
    val = load_segmentation(root, "val", classes=train.class_names)
    assert "holding out 20% for validation (2 of 10 images" in capsys.readouterr().out
    assert train.class_names == ["background", "road", "car", "sign"] and len(val.samples) == 2
    ys, xs = np.mgrid[0:40, 0:50]
    disc = (xs + 0.5 - 40) ** 2 + (ys + 0.5 - 8) ** 2 <= 16  # radius 4 about (40, 8)
    for sample in train.samples + val.samples:
        mask = np.asarray(Image.open(sample.mask))
        expected = np.asarray(Image.open(reference_masks / f"{sample.image_id}.png")).copy()
        expected[disc] = 3  # the smallest shapes last: the sign's disc, then the void corner
        expected[0:4, 0:6] = 255
        np.testing.assert_array_equal(mask, expected)
    out = tmp_path / "run"
    assert main(["--data", str(root), "--output", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_pixels"] == 2 * (40 * 50 - 24)


def test_bdd100k_drivable_areas_train_with_its_boxes_on_one_root_and_its_10k_masks_alone(tmp_path, monkeypatch) -> None:
    """BDD100K: labels/drivable/masks/ of images/100k/ (0 direct, 1 alternative, 2 background) become background 0,
    direct 1, alternative 2, other values void; with labels/det_20/ on the same root the multi-task runner trains
    detection and drivable areas together on the shared images. A root with only labels/sem_seg/masks/ of
    images/10k/ reads its Cityscapes train ids as they are."""
    from tasks.data.segmentation import load_segmentation
    from tasks.multitask import main as multitask_main

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root, semantic = tmp_path / "bdd100k", tmp_path / "bdd100k-10k"
    drivable = {}
    for split, count in (("train", 4), ("val", 2)):
        frames = []
        for i in range(count):
            stem = f"{split}-{i:03d}"
            _label_image(root / "images" / "100k" / split / f"{stem}.jpg", [0], rgb=True)
            drivable[stem] = _label_image(root / "labels" / "drivable" / "masks" / split / f"{stem}.png", [2, 0, 1, 7])
            box = {"x1": 4 + i, "y1": 3, "x2": 20 + i, "y2": 18}
            frames.append({"name": f"{stem}.jpg", "labels": [{"category": "car", "box2d": box}]})
            _label_image(semantic / "images" / "10k" / split / f"{stem}.jpg", [0], rgb=True)
            _label_image(semantic / "labels" / "sem_seg" / "masks" / split / f"{stem}.png", [0, 13, 255, 18])
        (root / "labels" / "det_20").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "det_20" / f"det_{split}.json").write_text(json.dumps(frames))
    data = load_segmentation(root, "train", classes=None)
    assert data.class_names == ["background", "direct", "alternative"] and len(data.samples) == 4
    as_classes = np.vectorize({2: 0, 0: 1, 1: 2, 7: 255}.get)
    for sample in data.samples:
        assert sample.image.parent == root / "images" / "100k" / "train"
        assert sample.mask.parent == root / "labels" / "drivable" / "masks" / "train"
        np.testing.assert_array_equal(_as_read(sample, 3), as_classes(drivable[sample.image_id]))
    assert main(["--data", str(root), "--output", str(tmp_path / "run"), *FAST]) == 0
    out = tmp_path / "both"
    assert multitask_main(["--data", str(root), "--tasks", "detect,segment", "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"detect", "segment"} <= set(metrics)
    assert metrics["detect"]["num_images"] == 2 and metrics["segment"]["num_pixels"] == 2 * 24 * 32 * 3 // 4
    alone = load_segmentation(semantic, "val", classes=None)
    assert len(alone.class_names) == 19 and alone.class_names[13] == "car" and len(alone.samples) == 2
    for sample in alone.samples:
        assert sample.image.parent == semantic / "images" / "10k" / "val"
        assert np.unique(np.asarray(Image.open(sample.mask))).tolist() == [0, 13, 18, 255]


def test_bdd100k_lane_markings_read_their_category_bits_where_the_data_names_their_folder(
    tmp_path, monkeypatch
) -> None:
    """labels/lane/masks/ of images/100k/: each byte holds the direction (32), the style (16), a background bit (8)
    and the category (the low three bits; bdd100k's eval/lane.py). Background is class 0 and the categories 1..8, in
    the toolkit's order, whatever the direction and style bits. ``--data bdd100k/labels/lane`` picks them where the
    drivable areas are there too (the root alone still reads those), and a root with lane masks alone reads them.
    A multi-task YAML trains BDD100K's boxes and its lane markings together on the shared images. Both runners report
    the toolkit's lane F-scores beside the IoUs."""
    from tasks.data.public_sets import BDD_LANES
    from tasks.data.segmentation import load_segmentation
    from tasks.metrics.lanes import BOUND_PIXELS, lane_f_scores
    from tasks.multitask import main as multitask_main

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "bdd100k"
    # 255 and 8 | 3 are background; 0 a crosswalk; 32 | 16 | 6 a vertical dashed single white; 7 a single yellow
    values, classes = [255, 0, 54, 7, 11], [0, 1, 7, 8, 0]
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            stem = f"{split}-{i:03d}"
            _label_image(root / "images" / "100k" / split / f"{stem}.jpg", [0], rgb=True)
            _label_image(root / "labels" / "drivable" / "masks" / split / f"{stem}.png", [2, 0, 1])
            _label_image(root / "labels" / "lane" / "masks" / split / f"{stem}.png", values[i:] + values[:i])
        frames = [
            {
                "name": f"{split}-{i:03d}.jpg",
                "labels": [{"category": "car", "box2d": {"x1": 4, "y1": 3, "x2": 20, "y2": 18}}],
            }
            for i in range(count)
        ]
        (root / "labels" / "det_20").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "det_20" / f"det_{split}.json").write_text(json.dumps(frames))
    assert load_segmentation(root, "train", classes=None).class_names == ["background", "direct", "alternative"]
    lanes = load_segmentation(root / "labels" / "lane", "train", classes=None)
    assert lanes.class_names == list(BDD_LANES) and len(BDD_LANES) == 9 and BDD_LANES[7] == "single white"
    for i, sample in enumerate(lanes.samples):
        assert sample.mask.parent == root / "labels" / "lane" / "masks" / "train"
        rows = np.resize(np.array(classes[i:] + classes[:i]), 24)[:, None].repeat(32, axis=1)
        np.testing.assert_array_equal(_as_read(sample, 9), rows)
    out = tmp_path / "run"
    assert main(["--data", str(root / "labels" / "lane"), "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == list(BDD_LANES)
    # the toolkit's lane F-scores beside the IoUs: those of the masks the run wrote, each image's scores averaged
    val = load_segmentation(root / "labels" / "lane", "val", classes=None)
    scores = np.mean(
        [
            lane_f_scores(_as_read(s, 9), np.asarray(Image.open(out / "masks" / f"{s.image_id}.png")), range(1, 9))
            for s in val.samples
        ],
        axis=0,
    )
    assert metrics["lane_f_score"]["images"] == 2 and list(metrics["lane_f_score"]["per_class"]) == list(BDD_LANES[1:])
    for column, bound in enumerate(BOUND_PIXELS):
        assert metrics["lane_f_score"][f"F1_pix{bound}"] == pytest.approx(scores[:, column].mean(), abs=1e-9)
    scored = tmp_path / "scored"  # the same masks scored with no model
    argv = [
        "eval",
        "--data",
        str(root / "labels" / "lane"),
        "--predictions",
        str(out / "masks"),
        "--output",
        str(scored),
    ]
    assert main(argv) == 0
    assert json.loads((scored / "metrics.json").read_text())["lane_f_score"] == metrics["lane_f_score"]
    # boxes and lane markings on the same images, as YOLOP trains them: one root per task in a multi-task YAML
    (tmp_path / "both.yaml").write_text("detect: bdd100k\nsegment: bdd100k/labels/lane\n")
    both = tmp_path / "both"
    args = ["--data", str(tmp_path / "both.yaml"), "--tasks", "detect,segment", "--output", str(both), *FAST]
    assert multitask_main(args) == 0
    metrics = json.loads((both / "metrics.json").read_text())
    assert metrics["detect"]["num_images"] == 2 and list(metrics["segment"]["per_class_iou"]) == list(BDD_LANES)
    assert metrics["segment"]["lane_f_score"]["images"] == 2
    shutil.rmtree(root / "labels" / "drivable")
    assert load_segmentation(root, "val", classes=None).class_names == list(BDD_LANES)  # lane masks alone


def test_oxford_pets_trimaps_train_the_pet_against_the_background_and_join_the_breeds_on_one_root(
    tmp_path, monkeypatch
) -> None:
    """oxford-iiit-pet/ as torchvision downloads it: each trimap torchvision's OxfordIIITPet reads gives the pet 1,
    the background 0 and the border void; with the breed lists on the same root, the multi-task runner trains
    classification and segmentation together on the same images."""
    from torchvision.datasets import OxfordIIITPet

    from tasks.data.segmentation import load_segmentation
    from tasks.multitask import main as multitask_main

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    pets = tmp_path / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1), ("boxer", 2)]
    for split, numbers in (("trainval", range(1, 3)), ("test", range(7, 8))):
        lines = []
        for label, (breed, species) in enumerate(breeds, start=1):
            for n in numbers:
                lines.append(f"{breed}_{n} {label} {species} {label}")
                _label_image(pets / "images" / f"{breed}_{n}.jpg", [0], rgb=True)
                _label_image(pets / "annotations" / "trimaps" / f"{breed}_{n}.png", [2, 3, 1, 1, 3, 2][n % 3 :])
        (pets / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(OxfordIIITPet, "_check_exists", lambda self: True)
    as_classes = np.vectorize({1: 1, 2: 0, 3: 255}.get)
    for split, theirs in (("train", "trainval"), ("val", "test")):
        reference = OxfordIIITPet(str(tmp_path), split=theirs, target_types="segmentation")
        data = load_segmentation(pets, split, classes=None)
        assert data.class_names == ["background", "pet"] and len(data.samples) == len(reference)
        for index, sample in enumerate(data.samples):
            assert sample.image == reference._images[index]
            trimap = np.asarray(reference[index][1])
            assert sample.mask.parent == pets / "annotations" / "trimaps"
            np.testing.assert_array_equal(_as_read(sample, 2), as_classes(trimap))
    assert not (tmp_path / "cache").exists()
    out = tmp_path / "both"
    assert multitask_main(["--data", str(pets), "--tasks", "classify,segment", "--output", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classify"]["num_samples"] == 2 and metrics["segment"]["num_pixels"] > 0
