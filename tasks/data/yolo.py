"""YOLO-format detection data, as Ultralytics and Roboflow write it.

- Each image has a label file: the image's path with its last ``images`` folder turned into ``labels`` and its
  suffix into ``.txt`` (``images/train/a.jpg`` -> ``labels/train/a.txt``), or beside the image where the path has
  no ``images`` folder. One object a line: ``class x_center y_center width height``, normalised to the image
  as shown (EXIF orientation applied); a segmentation line ``class x1 y1 x2 y2 ...`` gives the box around its
  polygon, and a pose line (the data YAML has ``kpt_shape``) its leading box. An image without a label file
  has no objects.
- A data YAML names the classes (``names``: a list, or a mapping from 0..K-1) and the splits (``train``,
  ``val``: a folder of images, a text file listing image paths, or a list of these), relative to ``path`` (by
  default the YAML's folder). Without one, a folder with ``images/<split>/`` and ``labels/<split>/``
  (Ultralytics) or ``<split>/images/`` and ``<split>/labels/`` (Roboflow) is read, and classes are named by
  their ids.

Labels are the YOLO class ids plus one (0 is torchvision's background), and ``category_ids`` are the YOLO ids, so
``predictions.json`` speaks the dataset's own ids. Image ids are the paths under the split's folder, without the
suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.detection import DetectionData, DetectionSample, FixCounts, clean_boxes
from tasks.data.images import READ_ERRORS, image_size, is_image_file
from tasks.errors import UserError
from tasks.io import read_text

YAML_NAMES = ("data.yaml", "dataset.yaml")
DEFAULT_SPLITS = (("train",), ("val", "valid"))
TOLERANCE = 1e-3  # normalised coordinates a little past 0..1 are clipped (and counted), not refused


def find_yaml(root: Path) -> Path | None:
    """The data YAML inside a dataset folder, if it has one."""
    for name in YAML_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def is_yolo_spec(spec: dict[str, Any]) -> bool:
    """A data YAML in Ultralytics' form (class ``names`` or ``nc``), not a COCO-files one."""
    return "names" in spec or "nc" in spec


def is_yolo_root(root: Path) -> bool:
    return root.is_dir() and (
        find_yaml(root) is not None
        or ((root / "images").is_dir() and (root / "labels").is_dir())
        or any((root / split / "images").is_dir() for names in DEFAULT_SPLITS for split in names)
    )


def label_path(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels."""
    parts = image.parts
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if not folders:
        return image.with_suffix(".txt")
    i = folders[-1]
    return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")


def class_names(spec: dict[str, Any], where: str) -> list[str] | None:
    """The YAML's class names in id order (``names`` as a list or an id mapping; or ``nc`` alone)."""
    names, count = spec.get("names"), spec.get("nc")
    if names is None:
        if count is None:
            return None
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UserError(f"{where}: 'nc' is {count!r}; expected a positive number of classes")
        return [f"class{i}" for i in range(count)]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise UserError(f"{where}: 'names' must map the ids 0..{len(names) - 1}; its keys are {sorted(names)!r}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise UserError(f"{where}: 'names' must be a list of class names, or a mapping from 0, 1, ...")
    if count is not None and count != len(names):
        raise UserError(f"{where}: 'nc' is {count!r} but 'names' lists {len(names)} classes")
    return [str(name) for name in names]


@dataclass(frozen=True)
class _Split:
    """A split's images, the folder their ids are relative to, and its name in messages."""

    images: list[Path]
    base: Path
    source: str


def _listed(entry: Path, where: str) -> list[Path]:
    """The images that a split entry names: a folder (searched through), a list file, or one image."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.is_file() and is_image_file(p))
    if entry.is_file() and entry.suffix.lower() == ".txt":
        lines = [line.strip() for line in read_text(entry, kind="image list").splitlines()]
        return [entry.parent / line for line in lines if line]  # absolute lines stay absolute
    if entry.is_file() and is_image_file(entry):
        return [entry]
    raise UserError(f"{where}: {entry} is neither a folder of images, a .txt list of them, nor an image")


def data_root(spec: dict[str, Any], yaml_path: Path) -> Path:
    """The folder that a data YAML's splits are relative to: its ``path`` (tried from the YAML's folder, then from
    the working directory), or the YAML's folder where it has none or that path does not exist."""
    here = yaml_path.parent
    if not spec.get("path"):
        return here
    given = Path(str(spec["path"]))
    candidates = [given] if given.is_absolute() else [here / given, Path.cwd() / given]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:  # a YAML moved with its data, or one that names Ultralytics' own datasets folder
        print(f"note: dataset file {yaml_path}: its path {str(spec['path'])!r} does not exist; reading from {here}")
    return found or here


def _from_spec(spec: dict[str, Any], yaml_path: Path, root: Path, split: str) -> _Split:
    where = f"dataset file {yaml_path}"
    entry = spec.get(split)
    entries = [entry] if isinstance(entry, str) else entry
    if not entry or not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise UserError(f"{where} needs '{split}:' naming a folder of images, a .txt list of them, or a list of these")
    paths = []
    for text in entries:
        path = root / text
        if not path.exists() and text.startswith("../"):  # Roboflow writes '../valid/images' beside data.yaml
            path = root / text[3:]
        if not path.exists():
            raise UserError(f"{where}: {split} entry {text!r} does not exist (looked for {path})")
        paths.append(path)
    images = [image for path in paths for image in _listed(path, where)]
    base = paths[0] if len(paths) == 1 and paths[0].is_dir() else root
    return _Split(images, base, f"{yaml_path} ({split})")


def _from_folder(root: Path, split: str | None, which: int) -> _Split:
    names = DEFAULT_SPLITS[which] if split in (None, DEFAULT_SPLITS[which][0]) else (split,)
    for name in names:
        for folder in (root / "images" / name, root / name / "images"):
            if folder.is_dir():
                return _Split(_listed(folder, f"--data {root}"), folder, f"{root} ({name})")
    looked = ", ".join(f"images/{n}/ or {n}/images/" for n in names)
    raise UserError(f"--data {root} has no YOLO split '{names[0]}': looked for {looked}")


def yolo_has_split(root: Path, name: str) -> bool:
    """Whether a data YAML, or a YOLO folder (by its data YAML, or else its folders), has the split ``name``."""
    from tasks.config import load_yaml

    yaml_path = root if root.is_file() else find_yaml(root)
    if yaml_path is not None:
        return name in load_yaml(yaml_path)
    return (root / "images" / name).is_dir() or (root / name / "images").is_dir()


@dataclass(frozen=True)
class LabelLine:
    """One object of a label file: its class id, its box [x1, y1, x2, y2] and, for a segmentation line, its
    polygon [x1, y1, x2, y2, ...], normalised to 0..1."""

    cls: int
    box: tuple[float, float, float, float]
    polygon: tuple[float, ...] | None
    number: int


def read_label_file(path: Path, keypoints: bool) -> list[LabelLine]:
    """The object lines of a label file; a line of another form is a one-line error naming the file and line."""
    rows = []
    for number, line in enumerate(read_text(path, kind="label file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"label file {path}, line {number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise UserError(f"{where}: {line.strip()!r} is not numbers") from None
        if not all(np.isfinite(values)) or values[0] < 0 or values[0] != int(values[0]):
            raise UserError(f"{where}: the class id {fields[0]!r} is not a whole number from 0")
        coords = values[1:]
        polygon = None
        if (len(coords) == 4 or keypoints) and len(coords) >= 4:
            cx, cy, w, h = coords[:4]
            if w < 0 or h < 0:
                raise UserError(f"{where}: width {w} and height {h} must not be negative")
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            checked = coords[:4]
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            box, polygon, checked = (min(xs), min(ys), max(xs), max(ys)), tuple(coords), coords
        else:
            raise UserError(
                f"{where}: {len(fields)} values; expected 'class x_center y_center width height' "
                "or a polygon 'class x1 y1 x2 y2 x3 y3 ...'"
            )
        outside = [v for v in checked if not -TOLERANCE <= v <= 1 + TOLERANCE]
        if outside:
            raise UserError(f"{where}: coordinate {outside[0]:g} is not normalised to 0..1 (YOLO labels are)")
        rows.append(LabelLine(int(values[0]), box, polygon, number))
    return rows


def _ids(split: _Split) -> list[str]:
    """Each image's id: its path under the split's folder without the suffix (with it, where two would clash)."""
    relative = []
    for image in split.images:
        try:
            relative.append(image.relative_to(split.base))
        except ValueError:
            relative.append(image)
    stems = [path.with_suffix("").as_posix() for path in relative]
    return stems if len(set(stems)) == len(stems) else [path.as_posix() for path in relative]


def yolo_lines(boxes: np.ndarray, classes: np.ndarray, shape: tuple[int, int], scores: np.ndarray | None = None) -> str:
    """A label file's text for ``boxes`` (x1, y1, x2, y2 in pixels of an image of ``shape``, (H, W)) of the class
    ids ``classes``: ``class x_center y_center width height`` normalised, six significant digits as Ultralytics
    writes them, each line ended by its score where ``scores`` are given (a prediction's file, not one to train
    on)."""
    height, width = shape
    lines = []
    for index, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        line = " ".join([str(int(classes[index])), *(f"{v:.6g}" for v in values)])
        lines.append(line if scores is None else f"{line} {float(scores[index]):.6g}")
    return "".join(line + "\n" for line in lines)


@dataclass
class LabelledImage:
    image: Path
    image_id: str
    width: int  # as shown: EXIF orientation applied
    height: int
    lines: list[LabelLine]  # empty where the image has no label file
    label_file: Path | None  # None where it has none


@dataclass
class YoloSource:
    """A YOLO dataset as found: its data YAML (if any), the folder its splits are relative to, its classes."""

    given: Path
    yaml_path: Path | None
    spec: dict[str, Any]
    root: Path
    names: list[str] | None  # None: no YAML and none configured, so the label files' ids name them
    names_from: str

    @property
    def keypoints(self) -> bool:
        return bool(self.spec.get("kpt_shape"))

    def split(self, name: str | None, which: int) -> _Split:
        """A split by its YAML key or folder name (None: the default of ``which``, 0 train or 1 val)."""
        if self.yaml_path is not None:
            return _from_spec(self.spec, self.yaml_path, self.root, name or DEFAULT_SPLITS[which][0])
        return _from_folder(self.root, name, which)

    def labelled(self, split: _Split) -> tuple[list[LabelledImage], int]:
        """The split's readable images with their label lines (class ids checked against the classes, where
        known), and how many images were left out as unreadable."""
        if not split.images:
            raise UserError(f"{split.source} holds no images")
        found, unreadable = [], 0
        for image, image_id in zip(split.images, _ids(split)):
            if not image.is_file():
                raise UserError(f"image {image} listed for {split.source} does not exist")
            try:
                width, height = image_size(image)
            except READ_ERRORS:
                unreadable += 1
                continue
            label_file = label_path(image)
            has_labels = label_file.is_file()
            lines = read_label_file(label_file, self.keypoints) if has_labels else []
            for line in lines:
                if self.names is not None and line.cls >= len(self.names):
                    raise UserError(
                        f"label file {label_file}, line {line.number}: class id {line.cls} is past the "
                        f"{len(self.names)} classes of {self.names_from} (ids 0..{len(self.names) - 1})"
                    )
            found.append(LabelledImage(image, image_id, width, height, lines, label_file if has_labels else None))
        if not found:
            raise UserError(f"{split.source}: none of its {len(split.images)} images could be read")
        if all(item.label_file is None for item in found):
            raise UserError(
                f"{split.source}: none of its {len(found)} images has a label file "
                f"(looked for {label_path(found[0].image)})"
            )
        return found, unreadable

    def name_by_ids(self, largest: int) -> list[str]:
        """Where no YAML or configured list names the classes: the ids up to the ``largest`` found, printed."""
        if largest < 0:
            raise UserError(
                f"--data {self.given}: its label files hold no objects, and with no data YAML or classes.txt no classes"
            )
        names = [str(i) for i in range(largest + 1)]
        print(f"classes (no data YAML or classes.txt: named by the ids in the label files): {', '.join(names)}")
        return names


def open_source(source: Path, classes: Sequence[str] | None) -> YoloSource:
    """A data YAML, or a YOLO dataset folder (with a data.yaml inside or none). ``classes`` names the classes
    where no data YAML does (the checkpoint's, in eval); the class list is printed."""
    from tasks.config import load_yaml

    yaml_path = source if source.is_file() else find_yaml(source)
    spec = load_yaml(yaml_path) if yaml_path is not None else {}
    if yaml_path is not None and not is_yolo_spec(spec):
        raise UserError(f"dataset file {yaml_path} has neither 'names' nor 'nc' (the classes of YOLO data)")
    names = class_names(spec, f"dataset file {yaml_path}")
    names_from = f"dataset file {yaml_path}"
    listing = _class_listing(source) if yaml_path is None else None
    if listing is not None:  # Label Studio's YOLO export, LabelImg's YOLO mode: one name a line, by id
        names = [line.strip() for line in read_text(listing, kind="class list").splitlines() if line.strip()]
        names_from = f"class list {listing}"
        if not names:
            raise UserError(f"class list {listing} names no classes")
    if names is None and classes:
        names, names_from = list(classes), "the configured class list"
    elif names is not None and classes and list(classes) != names:
        print(f"warning: the class names of {names_from} are used; the configured list {list(classes)} differs")
    elif names is not None:
        print(f"classes ({names_from}): {', '.join(names)}")
    root = data_root(spec, yaml_path) if yaml_path is not None else source
    return YoloSource(source, yaml_path, spec, root, names, names_from)


def _class_listing(folder: Path) -> Path | None:
    """A YOLO folder's ``classes.txt``, where it has no data YAML: beside ``images/`` or in ``labels/``."""
    for path in (folder / "classes.txt", folder / "labels" / "classes.txt"):
        if path.is_file():
            return path
    return None


def _detection(source: YoloSource, split: _Split) -> tuple[DetectionData, int]:
    """The split with labels 1..K, and the largest class id it holds (the caller names the classes where the
    source does not)."""
    images, unreadable = source.labelled(split)
    fixes = FixCounts(unlabelled=sum(item.label_file is None for item in images), unreadable=unreadable)
    samples, largest = [], -1
    for item in images:
        unique = list(dict.fromkeys((line.cls, line.box) for line in item.lines))
        fixes.duplicates += len(item.lines) - len(unique)
        largest = max([largest, *(cls for cls, _ in unique)])
        scale = [item.width, item.height, item.width, item.height]
        boxes = (np.array([box for _, box in unique], dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32)
        labels = np.array([cls + 1 for cls, _ in unique], dtype=np.int64)
        valid = clean_boxes(boxes, item.width, item.height, fixes)
        none = np.zeros(int(valid.sum()), bool)  # YOLO has no crowd or difficult flags
        samples.append(
            DetectionSample(item.image_id, item.image, item.width, item.height, boxes[valid], labels[valid], none, none)
        )
    names = source.names or []
    return DetectionData(samples, list(names), list(range(len(names))), source=split.source, fixes=fixes), largest


def read_yolo_splits(
    source: Path,
    *,
    train_split: str | None,
    val_split: str | None,
    classes: Sequence[str] | None,
    need_train: bool = True,
) -> tuple[DetectionData | None, DetectionData]:
    """(train, val) detection data from a data YAML or a YOLO dataset folder; train is None when
    ``need_train`` is False."""
    yolo = open_source(source, classes)
    splits = [(train_split, 0)] if need_train else []
    read = [_detection(yolo, yolo.split(name, which)) for name, which in [*splits, (val_split, 1)]]
    if yolo.names is None:
        names = yolo.name_by_ids(max(largest for _, largest in read))
        for data, _ in read:
            data.class_names, data.category_ids = list(names), list(range(len(names)))
    return (read[0][0] if need_train else None), read[-1][0]


__all__ = ["LabelLine", "YoloSource", "find_yaml", "is_yolo_root", "is_yolo_spec", "label_path", "open_source"]
__all__ += ["read_label_file", "read_yolo_splits", "yolo_has_split", "yolo_lines"]
