"""The VOC reader: 1-based inclusive boxes, difficult objects, the class-choice rules and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.data.voc import VOC_CLASSES, choose_classes, is_voc_root, read_voc
from tasks.errors import UserError


def _xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int], int]], size=(50, 40)) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>"
    )


def write_voc(root, images: dict[str, list], splits: dict[str, list[str]]):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        Image.new("RGB", (50, 40)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(f"{image_id}.jpg", objects))
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_boxes_difficult_and_voc_classes(tmp_path) -> None:
    root = write_voc(
        tmp_path,
        {"000001": [("dog", (1, 1, 10, 20), 0), ("cat", (5, 5, 60, 30), 1)], "000002": []},
        {"trainval": ["000001", "000002"]},
    )
    assert is_voc_root(root)
    classes, origin = choose_classes(root, ["trainval"], None)
    assert classes == list(VOC_CLASSES) and "20 Pascal VOC" in origin
    data = read_voc(root, "trainval", classes)
    first, second = data.samples
    assert first.image_id == "000001"
    # 1-based inclusive xmin=1..xmax=10 is 10 pixels wide: continuous 0..10
    np.testing.assert_allclose(first.boxes, [[0, 0, 10, 20], [4, 4, 50, 30]])  # the cat clipped to 50
    assert first.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert first.difficult.tolist() == [False, True]
    boxes, labels = first.training_targets()
    assert labels.tolist() == [VOC_CLASSES.index("dog") + 1]  # difficult left out of training
    assert len(second.boxes) == 0 and data.fixes.clipped == 1
    assert data.category_ids[:3] == [1, 2, 3]


def test_class_choice_falls_back_to_sorted_names_and_honours_a_given_list(tmp_path) -> None:
    root = write_voc(
        tmp_path,
        {"a": [("widget", (1, 1, 5, 5), 0)], "b": [("gadget", (1, 1, 5, 5), 0)]},
        {"train": ["a"], "val": ["b"]},
    )
    classes, origin = choose_classes(root, ["train", "val"], None)
    assert classes == ["gadget", "widget"] and "found" in origin
    assert choose_classes(root, ["train"], ["widget", "gadget"])[0] == ["widget", "gadget"]
    with pytest.raises(UserError, match=r"b.xml has unknown class name\(s\) \['gadget'\]"):
        read_voc(root, "val", ["widget"])
    lenient = read_voc(root, "val", ["widget"], strict_classes=False)
    assert len(lenient.samples[0].boxes) == 0


def test_malformed_xml_missing_image_and_empty_split(tmp_path) -> None:
    root = write_voc(tmp_path, {"a": [("dog", (1, 1, 5, 5), 0)]}, {"train": ["a"], "empty": []})
    with pytest.raises(UserError, match="lists no images"):
        read_voc(root, "empty", ["dog"])
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(UserError, match=r"a.jpg named by .*a.xml does not exist"):
        read_voc(root, "train", ["dog"])
    (root / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match=r"a.xml is not valid XML: line 1, column \d+"):
        read_voc(root, "train", ["dog"])
    with pytest.raises(UserError, match="no VOC split 'test'"):
        read_voc(root, "test", ["dog"])


def test_split_files_hold_whole_line_ids_and_per_class_flags(tmp_path) -> None:
    from tasks.data.voc import read_split_file

    listing = tmp_path / "train.txt"
    listing.write_text("\ufeff2008_000008\nholiday photo 3\n  2008_000015 -1\n2008_000016  1\n\nété\n", "utf-8")
    assert read_split_file(listing) == ["2008_000008", "holiday photo 3", "2008_000015", "2008_000016", "été"]


def test_voc_ids_with_spaces_and_non_ascii_class_names(tmp_path) -> None:
    root = write_voc(
        tmp_path,
        {"holiday photo": [("chèvre", (1, 1, 10, 20), 0)], "000002": [("chèvre", (2, 2, 9, 9), 0)]},
        {"trainval": ["holiday photo", "000002"]},
    )
    classes, _ = choose_classes(root, ["trainval"], None)
    assert classes == ["chèvre"]
    data = read_voc(root, "trainval", classes)
    assert [s.path.name for s in data.samples] == ["holiday photo.jpg", "000002.jpg"]
    assert [s.labels.tolist() for s in data.samples] == [[1], [1]]


def test_xml_beside_the_images_reads_as_the_same_data_in_vocs_layout(tmp_path, capsys) -> None:
    """Roboflow's Pascal VOC export (train/, valid/, test/, each image with its XML beside it) and LabelImg's
    folders: the same boxes, labels, difficult flags and classes as the same files in VOC's own layout; an XML
    whose <filename> is the image's old name finds the image of its own stem; valid is the default val split."""
    import shutil

    from tasks.data.detection_splits import detect_format, load_detection_splits

    objects = {
        "a": [("dog", (1, 1, 10, 20), 0), ("cat", (5, 5, 60, 30), 1)],
        "b": [("cat", (3, 4, 30, 35), 0)],
        "c": [],
        "d": [("dog", (10, 10, 40, 30), 0)],
    }
    voc = write_voc(tmp_path / "voc", objects, {"train": ["a", "b"], "val": ["c", "d"]})
    export = tmp_path / "export"
    for split, ids in (("train", ["a", "b"]), ("valid", ["c", "d"]), ("test", ["d"])):
        (export / split / "sub").mkdir(parents=True)
        for i in ids:
            folder = export / split / ("sub" if i == "b" else "")
            shutil.copy(voc / "JPEGImages" / f"{i}.jpg", folder)
            shutil.copy(voc / "Annotations" / f"{i}.xml", folder)
    labelled = export / "train" / "a.xml"
    labelled.write_text(labelled.read_text().replace("<filename>a.jpg", "<filename>IMG_0001.JPG"))
    assert detect_format(export, "auto") == "voc" and detect_format(voc, "auto") == "voc"

    expected = load_detection_splits(voc, fmt="auto", train_split="train", val_split="val", classes=None)
    got = load_detection_splits(export, fmt="auto", train_split=None, val_split=None, classes=None)
    assert capsys.readouterr().out.count("classes (the 20 Pascal VOC classes)") == 2
    for theirs, ours in zip(expected, got, strict=True):
        assert ours.class_names == theirs.class_names == list(VOC_CLASSES)
        assert len(ours.samples) == len(theirs.samples) == 2
        for mine, reference in zip(ours.samples, theirs.samples, strict=True):
            assert mine.path.stem == reference.path.stem and mine.path.is_file()
            np.testing.assert_array_equal(mine.boxes, reference.boxes)
            np.testing.assert_array_equal(mine.labels, reference.labels)
            np.testing.assert_array_equal(mine.difficult, reference.difficult)
    assert [s.image_id for s in got[0].samples] == ["a", "sub/b"] and got[1].source.endswith("(valid)")

    shutil.rmtree(export / "valid")  # then test stands in for val
    _, tested = load_detection_splits(export, fmt="voc", train_split=None, val_split=None, classes=None)
    assert [s.image_id for s in tested.samples] == ["d"]
    (export / "test" / "d.jpg").unlink()
    with pytest.raises(UserError, match=r"d.jpg named by .*test/d.xml does not exist"):
        load_detection_splits(export, fmt="voc", train_split=None, val_split=None, classes=["dog", "cat"])
    with pytest.raises(UserError, match=r"no VOC split 'extra': expected .*extra/ with XML files"):
        load_detection_splits(export, fmt="voc", train_split=None, val_split="extra", classes=["dog", "cat"])
