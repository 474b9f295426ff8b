"""YOLO-format detection data (Ultralytics' and Roboflow's layouts) read as the same COCO data would be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tasks.data.detection_splits import detect_format, load_detection_splits
from tasks.data.embedded import shapes_dataset
from tasks.data.yolo import label_path
from tasks.errors import UserError

NAMES = ["square", "circle", "triangle"]  # the shapes' category ids 1, 2, 3 in order


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory.mktemp("shapes"), size=64, train_images=6, val_images=4)


def coco_to_yolo(coco_root: Path, target: Path, *, layout: str = "ultralytics", data_yaml: bool = True) -> Path:
    """The COCO shapes as YOLO data: ``images/<split>/`` and ``labels/<split>/`` (ultralytics) or
    ``<split>/images/`` and ``<split>/labels/`` with Roboflow's '../' paths in data.yaml (roboflow)."""
    for split in ("train", "val"):
        coco = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        if layout == "ultralytics":
            images, labels = target / "images" / split, target / "labels" / split
        else:
            images, labels = target / split / "images", target / split / "labels"
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for image in coco["images"]:
            shutil.copy(coco_root / split / image["file_name"], images / image["file_name"])
            lines = []
            for a in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
                x, y, w, h = a["bbox"]
                cx, cy = (x + w / 2) / image["width"], (y + h / 2) / image["height"]
                lines.append(f"{a['category_id'] - 1} {cx!r} {cy!r} {w / image['width']!r} {h / image['height']!r}")
            (labels / Path(image["file_name"]).with_suffix(".txt")).write_text("\n".join(lines) + "\n")
    if data_yaml:
        splits = (
            {"train": "images/train", "val": "images/val"}
            if layout == "ultralytics"
            else {"train": "../train/images", "val": "../val/images"}  # as Roboflow writes them
        )
        (target / "data.yaml").write_text(yaml.safe_dump({**splits, "nc": 3, "names": NAMES}))
    return target


def _read(root: Path, **options):
    defaults = dict(fmt="auto", train_split=None, val_split=None, classes=None)
    return load_detection_splits(root, **{**defaults, **options})


def _same_as_coco(coco_root: Path, yolo_train, yolo_val) -> None:
    coco_train, coco_val = _read(coco_root)
    for coco, yolo in ((coco_train, yolo_train), (coco_val, yolo_val)):
        assert yolo.class_names == NAMES and yolo.category_ids == [0, 1, 2]
        assert len(yolo.samples) == len(coco.samples)
        for c, y in zip(coco.samples, yolo.samples):
            assert (y.path.name, y.width, y.height) == (c.path.name, c.width, c.height)
            assert y.image_id == c.path.stem
            np.testing.assert_allclose(y.boxes, c.boxes, atol=1e-4)
            np.testing.assert_array_equal(y.labels, c.labels)
            assert not y.crowd.any() and not y.difficult.any()


@pytest.mark.parametrize("layout", ["ultralytics", "roboflow"])
def test_reads_the_boxes_the_coco_files_hold(coco_root, tmp_path, layout, capsys) -> None:
    root = coco_to_yolo(coco_root, tmp_path / "yolo", layout=layout)
    assert detect_format(root, "auto") == "yolo" and detect_format(root / "data.yaml", "auto") == "yolo"
    for source in (root, root / "data.yaml"):
        train, val = _read(source)
        _same_as_coco(coco_root, train, val)
        assert train.fixes.report(train.source) is None  # nothing fixed
    assert "classes (dataset file " in capsys.readouterr().out


def test_a_folder_without_a_data_yaml_names_the_classes_by_their_ids(coco_root, tmp_path, capsys) -> None:
    root = coco_to_yolo(coco_root, tmp_path / "yolo", data_yaml=False)
    train, val = _read(root)
    assert "named by the ids in the label files): 0, 1, 2" in capsys.readouterr().out
    assert train.class_names == val.class_names == ["0", "1", "2"] and val.category_ids == [0, 1, 2]
    _, val = _read(root, classes=NAMES, need_train=False)  # eval: the checkpoint's names
    assert val.class_names == NAMES
    with pytest.raises(UserError, match=r"class id 2 is past the 2 classes of the configured class list"):
        _read(root, classes=NAMES[:2], need_train=False)
    (root / "labels" / "classes.txt").write_text("\n".join(NAMES) + "\n\n")  # LabelImg's and Label Studio's list
    train, val = _read(root)
    assert (
        f"classes (class list {root / 'labels' / 'classes.txt'}): square, circle, triangle" in capsys.readouterr().out
    )
    assert train.class_names == val.class_names == NAMES
    (root / "labels" / "classes.txt").write_text("square\ncircle\n")
    with pytest.raises(UserError, match=r"class id 2 is past the 2 classes of class list .*classes.txt"):
        _read(root)


def test_list_files_a_path_key_and_names_as_a_mapping(coco_root, tmp_path) -> None:
    root = coco_to_yolo(coco_root, tmp_path / "yolo", data_yaml=False)
    for split in ("train", "val"):  # one './' line and one absolute line, as Ultralytics' list files hold
        files = sorted((root / "images" / split).iterdir())
        lines = [f"./images/{split}/{f.name}" for f in files[:2]] + [str(f) for f in files[2:]]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    spec = {"path": str(root), "train": "train.txt", "val": ["val.txt"], "names": dict(enumerate(NAMES))}
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(spec))
    train, val = _read(tmp_path / "elsewhere.yaml")
    assert val.class_names == NAMES and len(train.samples) == 6 and len(val.samples) == 4
    coco_train, coco_val = _read(coco_root)
    np.testing.assert_allclose(val.samples[3].boxes, coco_val.samples[3].boxes, atol=1e-4)
    assert val.samples[0].image_id == "images/val/00001"  # relative to `path`: the splits are list files


def test_a_path_that_does_not_exist_reads_from_the_yamls_folder(coco_root, tmp_path, capsys) -> None:
    root = coco_to_yolo(coco_root, tmp_path / "yolo")
    spec = yaml.safe_load((root / "data.yaml").read_text())
    (root / "data.yaml").write_text(yaml.safe_dump({**spec, "path": "../datasets/shapes"}))  # Ultralytics' folder
    train, val = _read(root / "data.yaml")
    _same_as_coco(coco_root, train, val)
    out = capsys.readouterr().out
    assert out.count("its path '../datasets/shapes' does not exist; reading from") == 1, out


def test_label_files_sit_where_ultralytics_looks() -> None:
    assert label_path(Path("/d/images/train/a.jpg")) == Path("/d/labels/train/a.txt")
    assert label_path(Path("/d/train/images/sub/a.b.png")) == Path("/d/train/labels/sub/a.b.txt")
    assert label_path(Path("/images/x/images/a.jpg")) == Path("/images/x/labels/a.txt")  # the last one
    assert label_path(Path("/d/pictures/a.jpg")) == Path("/d/pictures/a.txt")  # none: beside the image


def _one_split(tmp_path: Path, lines: str, *, spec_extra: dict | None = None, size=(80, 40)) -> Path:
    """A dataset of one 80 x 40 image with ``lines`` as its label file, used for both splits."""
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    Image.new("RGB", size).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.txt").write_text(lines)
    spec = {"train": "images", "val": "images", "names": ["a", "b"], **(spec_extra or {})}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def test_polygons_pose_lines_duplicates_and_clipping(tmp_path) -> None:
    polygon = "1 0.1 0.25 0.5 0.75 0.25 0.5\n"  # its box: x 0.1..0.5, y 0.25..0.75
    box = "0 0.5 0.5 0.25 0.5\n"
    edge = "0 0.9995 0.5 0.002 0.5\n"  # a little past the right edge: clipped
    root = _one_split(tmp_path / "a", polygon + box + box + edge)
    _, val = _read(root, need_train=False)
    (sample,) = val.samples
    np.testing.assert_allclose(
        sample.boxes, [[8, 10, 40, 30], [30, 10, 50, 30], [79.88, 10, 80, 30]], atol=1e-4
    )  # pixels of the 80 x 40 image
    assert sample.labels.tolist() == [2, 1, 1]
    assert val.fixes.duplicates == 1 and val.fixes.clipped == 1
    assert "removed 1 duplicate label line(s)" in val.fixes.report("x")
    pose = "0 0.5 0.5 0.25 0.5 0.4 0.4 2 0.6 0.6 2\n"  # a box and two keypoints (x, y, visibility)
    root = _one_split(tmp_path / "b", pose, spec_extra={"kpt_shape": [2, 3]})
    _, val = _read(root, need_train=False)
    np.testing.assert_allclose(val.samples[0].boxes, [[30, 10, 50, 30]], atol=1e-4)


def test_missing_label_files_mean_no_objects_and_unreadable_images_are_counted(coco_root, tmp_path) -> None:
    root = coco_to_yolo(coco_root, tmp_path / "yolo")
    (root / "labels" / "val" / "00002.txt").unlink()
    (root / "images" / "val" / "00003.png").write_bytes(b"not a picture")
    _, val = _read(root, need_train=False)
    assert [s.image_id for s in val.samples] == ["00001", "00002", "00004"]
    assert len(val.samples[1].boxes) == 0 and len(val.samples[0].boxes) > 0
    assert val.fixes.report("x") == (
        "warning: x: 1 image(s) have no label file and are read as showing no objects; left out 1 unreadable image(s)"
    )
    shutil.rmtree(root / "labels")
    with pytest.raises(UserError, match=r"none of its 3 images has a label file \(looked for .*labels/val/00001.txt\)"):
        _read(root, need_train=False)


@pytest.mark.parametrize(
    "lines, spec_extra, message",
    [
        ("0 0.5 0.5 zero 0.5\n", {}, r"labels/a.txt, line 1: '0 0.5 0.5 zero 0.5' is not numbers"),
        ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n", {}, r"labels/a.txt, line 2: class id 2 is past the 2 classes of"),
        ("1.5 0.5 0.5 0.2 0.2\n", {}, r"line 1: the class id '1.5' is not a whole number from 0"),
        ("0 0.5 0.5 0.2\n", {}, r"line 1: 4 values; expected 'class x_center y_center width height' or a polygon"),
        ("0 40 20 10 10\n", {}, r"line 1: coordinate 40 is not normalised to 0..1"),
        ("0 0.5 0.5 -0.2 0.2\n", {}, r"line 1: width -0.2 and height 0.2 must not be negative"),
        ("", {"names": {0: "a", 2: "b"}}, r"'names' must map the ids 0..1; its keys are \[0, 2\]"),
        ("", {"nc": 3}, r"'nc' is 3 but 'names' lists 2 classes"),
        ("", {"val": "pictures"}, r"val entry 'pictures' does not exist \(looked for .*pictures\)"),
        ("", {"val": None}, r"needs 'val:' naming a folder of images, a .txt list of them, or a list of these"),
    ],
)
def test_bad_labels_and_data_yamls_are_one_line_errors(tmp_path, lines, spec_extra, message) -> None:
    root = _one_split(tmp_path, lines or "0 0.5 0.5 0.2 0.2\n", spec_extra=spec_extra)
    with pytest.raises(UserError, match=message) as raised:
        _read(root, need_train=False)
    assert "\n" not in str(raised.value)


def test_a_folder_that_is_no_known_layout_names_every_format(tmp_path) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(UserError, match=r"YOLO data \(a data.yaml, or images/<split>/ and labels/<split>/\), KITTI's"):
        _read(tmp_path)
    with pytest.raises(UserError, match=r"choose coco, voc, yolo, kitti, labelme, cityscapes, bdd100k or widerface"):
        _read(tmp_path, fmt="darknet")


# ---- segmentation: polygon lines become semantic masks ----


def polygon_set(yolo: Path, coco: Path | None = None, *, splits=(("val", 4),), seed: int = 0) -> Path:
    """Random five-point polygons of the three classes on 64 x 48 images, as YOLO segmentation data under
    ``yolo`` (with a data.yaml) and, where ``coco`` is given, as a COCO instances file of the same polygons."""
    rng = np.random.default_rng(seed)
    width, height = 64, 48
    yaml_splits = {}
    for split, count in splits:
        for folder in (yolo / "images" / split, yolo / "labels" / split):
            folder.mkdir(parents=True)
        yaml_splits[split] = f"images/{split}"
        images, annotations = [], []
        for n in range(1, count + 1):
            name = f"{n:03d}.png"
            Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(yolo / "images" / split / name)
            images.append({"id": n, "file_name": name, "width": width, "height": height})
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                cls = int(rng.integers(0, 3))
                points = np.stack([rng.integers(0, width + 1, 5), rng.integers(0, height + 1, 5)], 1).astype(float)
                xs, ys = points[:, 0], points[:, 1]
                area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
                normalised = (points / [width, height]).ravel()
                lines.append(" ".join([str(cls), *(repr(float(v)) for v in normalised)]))
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": n, "category_id": cls + 1, "iscrowd": 0, "area": area,
                     "segmentation": [points.ravel().tolist()]}
                )  # fmt: skip
            (yolo / "labels" / split / f"{n:03d}.txt").write_text("\n".join(lines) + "\n")
        if coco is not None:
            (coco / split).mkdir(parents=True)
            (coco / "annotations").mkdir(exist_ok=True)
            for image in images:
                shutil.copy(yolo / "images" / split / image["file_name"], coco / split / image["file_name"])
            categories = [{"id": i + 1, "name": name} for i, name in enumerate(NAMES)]
            document = {"images": images, "annotations": annotations, "categories": categories}
            (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    (yolo / "data.yaml").write_text(yaml.safe_dump({**yaml_splits, "names": NAMES}))
    return yolo


def test_polygons_become_the_masks_the_same_coco_polygons_give(tmp_path, monkeypatch) -> None:
    """Random polygons written as YOLO lines and as a COCO instances file: pycocotools draws the same semantic
    masks through both readers, larger objects first."""
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    yolo = polygon_set(tmp_path / "yolo", tmp_path / "coco")
    ours = load_segmentation(yolo, "val", classes=None)
    theirs = load_segmentation(tmp_path / "coco", "val", classes=None)
    assert ours.class_names == theirs.class_names == ["background", *NAMES]
    assert [s.image_id for s in ours.samples] == ["001", "002", "003", "004"]
    drawn = 0
    for a, b in zip(ours.samples, theirs.samples):
        mask = np.asarray(Image.open(a.mask))
        np.testing.assert_array_equal(mask, np.asarray(Image.open(b.mask)))
        assert mask.shape == (48, 64)
        drawn += int((mask > 0).sum())
    assert drawn > 1000  # the polygons cover something
    assert load_segmentation(yolo / "data.yaml", "val", classes=None).samples[0].mask == ours.samples[0].mask  # cached


def test_a_box_line_is_void_in_a_mask_and_a_missing_label_file_all_background(tmp_path, monkeypatch, capsys) -> None:
    from tasks.data.segmentation import load_segmentation

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    rectangle = "1 0.1 0.25 0.5 0.25 0.5 0.75 0.1 0.75\n"  # x 8..40, y 10..30 of the 80 x 40 image
    box = "0 0.5 0.5 0.25 0.5\n"  # x 30..50, y 10..30: smaller, so drawn over the rectangle
    root = _one_split(tmp_path / "d", rectangle + box)
    Image.new("RGB", (80, 40)).save(root / "images" / "b.png")  # no label file
    data = load_segmentation(root, "val", classes=None, fmt="yolo")
    assert data.class_names == ["background", "a", "b"]
    mask = np.asarray(Image.open(data.samples[0].mask))
    expected = np.zeros((40, 80), np.uint8)
    expected[10:30, 8:40] = 2
    expected[10:30, 30:50] = 255
    np.testing.assert_array_equal(mask, expected)
    assert not np.asarray(Image.open(data.samples[1].mask)).any()
    out = capsys.readouterr().out
    assert "1 image(s) have no label file" in out and "1 object(s) given as a box, not a polygon" in out


# ---- no val split: a share held out by the hash of each path ----


def _hashed(names: list[str], count: int) -> set[str]:
    import hashlib

    return set(sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:count])


def test_without_a_val_split_a_fifth_is_held_out_of_the_train_split_or_the_whole_folder(coco_root, tmp_path, capsys):
    """A data YAML with train only, images/train/ alone, and images/ with labels/ and no split folders: the
    held-out images are those of the smallest SHA-1 of their path under the root, the rest train; together they
    are the split they came from, boxes and all."""
    root = coco_to_yolo(coco_root, tmp_path / "yolo")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": NAMES}))
    whole = _read(root, val_split="train", need_train=False)[1]
    train, val = _read(root)
    assert "holding out 20% for validation (1 of 6 images" in capsys.readouterr().out
    held = _hashed([f"images/train/{s.path.name}" for s in whole.samples], 1)
    assert {f"images/train/{s.path.name}" for s in val.samples} == held
    assert sorted(s.path for s in train.samples + val.samples) == sorted(s.path for s in whole.samples)
    by_path = {s.path: s for s in whole.samples}
    for s in train.samples + val.samples:
        np.testing.assert_array_equal(s.boxes, by_path[s.path].boxes)
    assert val.class_names == NAMES and val.source.endswith("(20% held out)")

    (root / "data.yaml").unlink()
    shutil.rmtree(root / "images" / "val")
    assert [s.path for s in _read(root)[1].samples] == [s.path for s in val.samples]  # images/train/ alone

    flat, source = tmp_path / "flat", coco_to_yolo(coco_root, tmp_path / "again", data_yaml=False)
    for kind in ("images", "labels"):
        (flat / kind).mkdir(parents=True)
        for path in sorted((source / kind).rglob("*.*")):
            shutil.copy(path, flat / kind / f"{path.parent.name}-{path.name}")  # 10 images, no split folders
    assert detect_format(flat, "auto") == "yolo"
    train, val = _read(flat, val_fraction=0.5)
    names = [p.relative_to(flat).as_posix() for p in (flat / "images").iterdir()]
    assert {s.path.relative_to(flat).as_posix() for s in val.samples} == _hashed(names, 5)
    assert len(train.samples) == 5 and "holding out 50% for validation (5 of 10 images" in capsys.readouterr().out
    assert sum(len(s.boxes) for s in train.samples + val.samples) == sum(
        len(s.boxes) for s in [*_read(source)[0].samples, *_read(source)[1].samples]
    )
