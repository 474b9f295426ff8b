"""The COCO reader: id mapping, crowd and empty images, sub-folders, fixes and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.coco import find_coco_split, read_coco
from tasks.errors import UserError


def write_coco(root, *, split="val2017", image_mode="RGB"):
    images_dir = root / split
    (images_dir / "sub").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new(image_mode, (40, 30)).save(images_dir / "a.png")
    Image.new(image_mode, (50, 60)).save(images_dir / "sub" / "b.png")
    Image.new(image_mode, (20, 20)).save(images_dir / "c.png")
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 9, "file_name": "sub/b.png", "width": 50, "height": 60},
            {"id": 11, "file_name": "c.png", "width": 20, "height": 20},  # no annotations
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # leaves the image
            {"id": 3, "image_id": 9, "category_id": 90, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
            {"id": 4, "image_id": 9, "category_id": 3, "bbox": [0, 0, 50, 60], "iscrowd": 1},
        ],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_reads_ids_labels_crowd_and_sub_folders(tmp_path) -> None:
    root = write_coco(tmp_path)
    data = read_coco(*find_coco_split(root, "val2017"))
    assert data.class_names == ["car", "zebra"] and data.category_ids == [3, 90]
    a, b, c = data.samples
    assert a.image_id == 7 and b.path.name == "b.png" and b.path.parent.name == "sub"
    np.testing.assert_allclose(a.boxes, [[1, 2, 11, 7], [30, 20, 40, 30]])  # the second one clipped
    assert a.labels.tolist() == [1, 2]
    assert b.labels.tolist() == [1] and b.crowd.tolist() == [True]  # the zero-width box dropped
    boxes, labels = b.training_targets()
    assert len(boxes) == 0 and len(labels) == 0  # crowd left out of training
    assert len(c.boxes) == 0  # images without annotations stay
    assert (data.fixes.clipped, data.fixes.dropped) == (1, 1)
    assert "clipped 1" in data.fixes.report("val") and "dropped 1" in data.fixes.report("val")


def test_ground_truth_round_trip_keeps_the_dataset_ids(tmp_path) -> None:
    data = read_coco(*find_coco_split(write_coco(tmp_path), "val2017"))
    gt = data.coco_ground_truth()
    assert [i["id"] for i in gt["images"]] == [7, 9, 11]
    assert {c["id"]: c["name"] for c in gt["categories"]} == {3: "car", 90: "zebra"}
    assert [(a["image_id"], a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [
        (7, 3, 0),
        (7, 90, 0),
        (9, 3, 1),
    ]
    assert gt["annotations"][1]["bbox"] == [30.0, 20.0, 10.0, 10.0]


def test_images_folder_layout(tmp_path) -> None:
    root = write_coco(tmp_path, split="train")
    (root / "images").mkdir()
    (root / "train").rename(root / "images" / "train")
    annotations, images = find_coco_split(root, "train")
    assert images == root / "images" / "train"


def test_malformed_json_names_file_and_position(tmp_path) -> None:
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [1, 2,}')
    with pytest.raises(UserError, match=r"instances_val2017.json is not valid JSON: .* line 1, column \d+"):
        read_coco(*find_coco_split(root, "val2017"))


def test_missing_image_and_unknown_category(tmp_path) -> None:
    root = write_coco(tmp_path)
    (root / "val2017" / "c.png").unlink()
    with pytest.raises(UserError, match=r"image .*c.png listed in .*instances_val2017.json does not exist"):
        read_coco(*find_coco_split(root, "val2017"))
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["images"] = data["images"][:2]
    data["annotations"][0]["category_id"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="unknown category_id 4"):
        read_coco(*find_coco_split(root, "val2017"))


def test_missing_split(tmp_path) -> None:
    with pytest.raises(UserError, match="no COCO split 'train2017'"):
        find_coco_split(write_coco(tmp_path), "train2017")


def _document(root, data) -> None:
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")


def test_a_box_is_derived_from_the_segmentation_and_a_size_from_the_file(tmp_path) -> None:
    root = write_coco(tmp_path)
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    del data["images"][0]["width"], data["images"][0]["height"]  # a.png is 40x30
    square = [2.0, 3.0, 12.0, 3.0, 12.0, 9.0, 2.0, 9.0]  # polygon of the box x 2-12, y 3-9
    data["annotations"] = [
        {"id": 1, "image_id": 7, "category_id": 3, "segmentation": [square], "iscrowd": 0},  # no bbox
        {"id": 2, "image_id": 9, "category_id": 3, "bbox": [], "segmentation": [], "iscrowd": 0},  # nothing at all
    ]
    _document(root, data)
    read = read_coco(*find_coco_split(root, "val2017"))
    a, b, _ = read.samples
    assert (a.width, a.height) == (40, 30)
    np.testing.assert_allclose(a.boxes, [[2, 3, 12, 9]])  # pycocotools' toBbox of the polygon
    assert len(b.boxes) == 0
    report = read.fixes.report("val")
    assert "derived 1 box(es) from their segmentation" in report and "size of 1 image(s) from the file" in report


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda d: d["images"][0].pop("file_name"), "images entry 0 needs an 'id' and a 'file_name'"),
        (lambda d: d["images"][1].update(width="wide"), "images entry 1 has width 'wide'"),
        (lambda d: d["images"][0].update(height=-3), "height -3"),
        (lambda d: d["categories"][0].pop("id"), "categories entry 0 needs an integer 'id'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, "x", 4]), "annotations entry 0 has bbox [1, 2, 'x', 4]"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "annotations entry 1 has bbox"),
        (lambda d: d["annotations"][2].pop("image_id"), "annotations entry 2 needs an 'image_id'"),
        (lambda d: d.update(annotations={"a": 1}), "'annotations' must be a list"),
    ],
)
def test_entries_of_the_wrong_shape_are_one_line_errors(tmp_path, change, needle) -> None:
    root = write_coco(tmp_path)
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    change(data)
    _document(root, data)
    with pytest.raises(UserError, match="instances_val2017.json") as caught:
        read_coco(*find_coco_split(root, "val2017"))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_non_ascii_names_and_paths_are_read_as_utf8(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LC_ALL", "C")  # the locale's encoding must not matter (it is read once at start-up)
    root = write_coco(tmp_path / "données")
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    data["categories"][0]["name"] = "zèbre 斑马"
    (root / "val2017" / "a.png").rename(root / "val2017" / "château.png")
    data["images"][0]["file_name"] = "château.png"
    _document(root, data)
    read = read_coco(*find_coco_split(root, "val2017"))
    assert "zèbre 斑马" in read.class_names and read.samples[0].path.name == "château.png"
    (root / "annotations" / "instances_val2017.json").write_bytes('{"images": [], "x": "é"}'.encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_coco(*find_coco_split(root, "val2017"))


def test_box_clean_up_through_torchvision_ops_matches_the_hand_written_rules() -> None:
    """clip_boxes_to_image and remove_small_boxes replaced a numpy clip and a positive-area test: the same boxes,
    masks and counts on random boxes that leave the image, are inverted or have no area."""
    from tasks.data.detection import FixCounts, clean_boxes

    rng = np.random.default_rng(3)
    boxes = rng.uniform(-20, 120, (400, 4)).astype(np.float32)
    boxes[::7, 2] = boxes[::7, 0]  # zero width
    boxes[::11, 3] = boxes[::11, 1] - 1  # inverted
    expected = boxes.copy()  # the rules as they were written by hand
    np.clip(expected[:, 0::2], 0, 100, out=expected[:, 0::2])
    np.clip(expected[:, 1::2], 0, 80, out=expected[:, 1::2])
    valid = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    clipped = int((np.any(expected != boxes, axis=1) & valid).sum())
    fixes = FixCounts()
    got = clean_boxes(boxes, 100, 80, fixes)
    np.testing.assert_array_equal(got, valid)
    np.testing.assert_array_equal(boxes, expected)  # clipped in place
    assert (fixes.clipped, fixes.dropped) == (clipped, int((~valid).sum())) and 0 < fixes.dropped < 400
    assert boxes.dtype == np.float32


def _roboflow(root, *, umbrella: bool = True):
    """The same images and boxes as Roboflow exports them: <split>/_annotations.coco.json beside the images, the
    splits train and valid, and (``umbrella``) the dataset's name as category 0, the others' supercategory."""
    for split, coco_split in (("train", "train2017"), ("valid", "val2017")):
        write_coco(root / "coco" / coco_split, split=coco_split)
        source = root / "coco" / coco_split
        data = json.loads((source / "annotations" / f"instances_{coco_split}.json").read_text())
        if umbrella:
            for category in data["categories"]:
                category["supercategory"] = "vehicles"
            data["categories"].insert(0, {"id": 0, "name": "vehicles", "supercategory": "none"})
        shutil.copytree(source / coco_split, root / "export" / split)
        (root / "export" / split / "_annotations.coco.json").write_text(json.dumps(data))
    return root / "export"


def test_roboflow_exports_read_as_coco_without_their_umbrella_category(tmp_path, capsys) -> None:
    from tasks.data.detection_splits import detect_format, load_detection_splits

    root = _roboflow(tmp_path)
    assert detect_format(root, "auto") == "coco"
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert (
        "category 0 ('vehicles') labels nothing and is the supercategory of all the others" in capsys.readouterr().out
    )
    assert train.class_names == val.class_names == ["car", "zebra"] and val.category_ids == [3, 90]
    assert val.source.endswith("valid/_annotations.coco.json")  # valid stands in for val
    _, named = load_detection_splits(
        root, fmt="auto", train_split=None, val_split="val", classes=None, need_train=False
    )
    assert named.source == val.source  # as the multi-task runner asks for it: val, by name
    assert "has no 'val' split: evaluating on its 'valid' split" in capsys.readouterr().out
    expected = read_coco(*find_coco_split(tmp_path / "coco" / "val2017", "val2017"))
    for ours, theirs in zip(val.samples, expected.samples):
        assert ours.path.relative_to(root / "valid") == theirs.path.relative_to(
            tmp_path / "coco" / "val2017" / "val2017"
        )
        np.testing.assert_array_equal(ours.boxes, theirs.boxes)
        np.testing.assert_array_equal(ours.labels, theirs.labels)


def test_an_unused_category_that_is_not_an_umbrella_stays(tmp_path) -> None:
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["categories"].append({"id": 50, "name": "bus", "supercategory": "other"})  # labels nothing, a class still
    path.write_text(json.dumps(data))
    assert read_coco(*find_coco_split(root, "val2017")).class_names == ["car", "bus", "zebra"]
    with pytest.raises(UserError, match=r"expected .*instances_test.json or .*test/_annotations.coco.json"):
        find_coco_split(root, "test")


def test_an_export_with_a_train_split_alone_holds_out_a_share_of_it(tmp_path, capsys) -> None:
    """Roboflow exports a train split alone when asked to: val is held out of it by the hash of each path, and
    named splits that do not exist are still errors."""
    from tasks.data.detection_splits import load_detection_splits

    root = _roboflow(tmp_path)
    shutil.rmtree(root / "valid")
    _, whole = load_detection_splits(root, fmt="auto", train_split=None, val_split="train", classes=None)
    train, val = load_detection_splits(
        root, fmt="auto", train_split=None, val_split=None, classes=None, val_fraction=0.5
    )
    assert "holding out 50% for validation (2 of 3 images" in capsys.readouterr().out
    assert sorted(s.image_id for s in train.samples + val.samples) == sorted(s.image_id for s in whole.samples)
    assert train.class_names == val.class_names == ["car", "zebra"] and val.source.endswith("(50% held out)")
    with pytest.raises(UserError, match="no COCO split 'valid'"):
        load_detection_splits(root, fmt="auto", train_split=None, val_split="valid", classes=None)


@pytest.mark.parametrize("images", ["images", "images/default"])
def test_cvats_coco_export_of_one_subset_is_held_out_of(tmp_path, capsys, images) -> None:
    """CVAT exports a task without subsets as annotations/instances_default.json with images/ (or
    images/default/): it trains on the rest of its images and validates on the held-out share of them."""
    from tasks.data.detection_splits import load_detection_splits

    root = write_coco(tmp_path / "cvat", split="default")
    (root / images).parent.mkdir(parents=True, exist_ok=True)
    (root / "default").rename(root / images)
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert "holding out 20% for validation (1 of 3 images" in capsys.readouterr().out
    assert sorted(s.image_id for s in train.samples + val.samples) == [7, 9, 11]
    assert len(val.samples) == 1 and all(s.path.is_file() for s in train.samples + val.samples)
    assert val.source.endswith("instances_default.json (20% held out)")


def test_label_studios_coco_export_reads_its_windows_names_and_holds_out_val(tmp_path, capsys) -> None:
    """Label Studio's COCO export: result.json beside images/, file names written 'images\\\\<name>' on Windows
    (or with its project folder between); the one split is held out of."""
    from tasks.data.detection_splits import detect_format, load_detection_splits

    source = write_coco(tmp_path / "coco")
    reference = read_coco(*find_coco_split(source, "val2017"))
    root = tmp_path / "export"
    (root / "images").mkdir(parents=True)
    data = json.loads((source / "annotations" / "instances_val2017.json").read_text())
    for image, written in zip(data["images"], ("images\\a.png", "images\\1/b.png", "c.png")):
        shutil.copy(source / "val2017" / image["file_name"], root / "images" / Path(image["file_name"]).name)
        image["file_name"] = written
    (root / "result.json").write_text(json.dumps(data))
    assert detect_format(root, "auto") == "coco"
    train, val = load_detection_splits(root, fmt="auto", train_split=None, val_split=None, classes=None)
    assert "holding out 20% for validation (1 of 3 images" in capsys.readouterr().out
    got = sorted(train.samples + val.samples, key=lambda s: s.image_id)
    assert [s.path for s in got] == [root / "images" / name for name in ("a.png", "b.png", "c.png")]
    for ours, theirs in zip(got, reference.samples, strict=True):
        np.testing.assert_array_equal(ours.boxes, theirs.boxes)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
