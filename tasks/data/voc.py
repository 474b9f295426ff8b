"""Pascal VOC detection data: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``; or each
split a folder of images with their XML files beside them (``train/a.jpg`` and ``train/a.xml``: Roboflow's Pascal
VOC export, and LabelImg's folders once split).

VOC boxes are 1-based inclusive pixels; they become continuous corners here
(``x1 = xmin - 1``, ``x2 = xmax``) and go back the same way for VOC's evaluator.
"""

from __future__ import annotations

import glob
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.data.detection import DetectionData, DetectionSample, FixCounts, clean_boxes
from tasks.data.images import READ_ERRORS, image_size, is_image_file
from tasks.errors import UserError
from tasks.io import read_text

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class _VocObject:
    name: str
    box: tuple[float, float, float, float]  # continuous corners
    difficult: bool


PAIRED_SPLITS = (("train",), ("val", "valid", "test"))  # the paired layout's default splits, in order


def is_voc_root(root: Path) -> bool:
    return (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir()


def paired_split(root: Path, split: str) -> Path | None:
    """``root/<split>/`` where it holds VOC XML files beside its images (the paired layout), else None."""
    folder = root / split
    return folder if folder.is_dir() and next(folder.rglob("*.xml"), None) is not None else None


def is_paired_voc_root(root: Path) -> bool:
    if is_voc_root(root) or not root.is_dir():
        return False
    flat = next(root.glob("*.xml"), None) is not None  # LabelImg's folder: one split, held out of (holdout.py)
    return flat or any(paired_split(root, s) for names in PAIRED_SPLITS for s in names)


def has_split(root: Path, split: str) -> bool:
    if is_voc_root(root):
        return (root / "ImageSets" / "Main" / f"{split}.txt").is_file()
    return paired_split(root, split) is not None


def _entries(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(image id, XML file, the folder its image is in) of each image of ``split``. In the paired layout the id is
    the XML's path under the split folder, without its suffix."""
    if is_voc_root(root):
        return [(i, root / "Annotations" / f"{i}.xml", root / "JPEGImages") for i in split_ids(root, split)]
    folder = paired_split(root, split)
    if folder is None:
        raise UserError(f"--data {root} has no VOC split '{split}': expected {root / split}/ with XML files")
    xmls = sorted(folder.rglob("*.xml"))
    return [(x.relative_to(folder).with_suffix("").as_posix(), x, x.parent) for x in xmls]


def _image_of(xml_path: Path, filename: str | None, image_id: str, folder: Path, *, paired: bool) -> Path:
    """The image an XML file describes: its ``<filename>`` in the image folder; in the paired layout, where no
    such file is there (LabelImg keeps the name the image had when labelled), the image of the XML's stem."""
    named = folder / (filename or f"{Path(image_id).name}.jpg")
    if named.is_file() or not paired:
        return named
    beside = sorted(p for p in folder.glob(f"{glob.escape(xml_path.stem)}.*") if is_image_file(p))
    return beside[0] if beside else named


def read_split_file(path: Path) -> list[str]:
    """The image ids of a VOC split file, one per line, read as UTF-8. An id is the whole line, so ids with
    spaces work; a line of an id and a VOC flag (``2008_000008 -1``, a per-class list) gives the id."""
    ids = []
    for line in read_text(path, kind="split file").splitlines():
        line = line.strip()
        if not line:
            continue
        flagged = re.fullmatch(r"(\S+)\s+(-1|0|1)", line)
        ids.append(flagged.group(1) if flagged else line)
    return ids


def split_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"--data {root} has no VOC split '{split}': expected {path}")
    ids = read_split_file(path)
    if not ids:
        raise UserError(f"split file {path} lists no images")
    return ids


def choose_classes(root: Path, splits: Sequence[str], given: Sequence[str] | None) -> tuple[list[str], str]:
    """The class list and where it came from: the user's list, VOC's 20, or the names found."""
    if given:
        return list(given), "the configured class list"
    found = {obj.name for split in splits for _, xml_path, _ in _entries(root, split) for obj in _parse(xml_path)[1]}
    if found <= set(VOC_CLASSES):
        return list(VOC_CLASSES), "the 20 Pascal VOC classes"
    return sorted(found), "the names found in the annotations"


def read_voc(root: Path, split: str, class_names: Sequence[str], *, strict_classes: bool = True) -> DetectionData:
    """One split; an object of a class not in ``class_names`` is an error when ``strict_classes``
    (a list the user gave), and otherwise skipped."""
    label_of = {name: index + 1 for index, name in enumerate(class_names)}
    fixes = FixCounts()
    samples = []
    paired = not is_voc_root(root)
    for image_id, xml_path, folder in _entries(root, split):
        (filename, size), objects = _parse(xml_path)
        image_path = _image_of(xml_path, filename, image_id, folder, paired=paired)
        if not image_path.is_file():
            raise UserError(f"image {image_path} named by {xml_path} does not exist")
        width, height = size or _image_size(image_path)
        unknown = sorted({o.name for o in objects if o.name not in label_of})
        if unknown and strict_classes:
            raise UserError(f"{xml_path} has unknown class name(s) {unknown}; the class list is {list(class_names)}")
        objects = [o for o in objects if o.name in label_of]
        boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([label_of[o.name] for o in objects], dtype=np.int64)
        difficult = np.array([o.difficult for o in objects], dtype=bool)
        valid = clean_boxes(boxes, width, height, fixes)
        samples.append(
            DetectionSample(
                image_id,
                image_path,
                width,
                height,
                boxes[valid],
                labels[valid],
                np.zeros(int(valid.sum()), bool),
                difficult[valid],
            )
        )
    return DetectionData(
        samples, list(class_names), list(range(1, len(class_names) + 1)), source=f"{root} ({split})", fixes=fixes
    )


def _parse(path: Path) -> tuple[tuple[str | None, tuple[int, int] | None], list[_VocObject]]:
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist")
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        line, column = error.position
        raise UserError(f"annotation file {path} is not valid XML: line {line}, column {column}") from None
    node = tree.getroot()
    filename = node.findtext("filename")
    width, height = node.findtext("size/width"), node.findtext("size/height")
    try:
        size = (int(float(width)), int(float(height))) if width and height and float(width) > 0 else None
    except ValueError:
        raise UserError(f"annotation file {path}: <size> has width {width!r} and height {height!r}") from None
    objects = []
    for obj in node.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise UserError(f"annotation file {path}: an <object> lacks <name> or <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise UserError(f"annotation file {path}: object {name!r} has a non-numeric <bndbox>") from None
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(_VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax), difficult))
    return (filename.strip() if filename else None, size), objects


def _image_size(path: Path) -> tuple[int, int]:
    try:
        return image_size(path)  # as shown: EXIF orientation applied, as the image is read
    except READ_ERRORS:
        raise UserError(f"image {path} is not a readable image") from None
