"""Where detection data lives: format detection, split defaults, dataset YAML files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from tasks.config import load_yaml
from tasks.data import bdd100k, holdout, kitti, labelme, public_sets, widerface
from tasks.data.coco import coco_split_file, find_coco_split, is_coco_root, read_coco
from tasks.data.detection import DetectionData
from tasks.data.folders import val_or_stand_in
from tasks.data.holdout import CVAT_SUBSET
from tasks.data.voc import (
    PAIRED_SPLITS,
    choose_classes,
    has_split,
    is_paired_voc_root,
    is_voc_root,
    read_voc,
    split_ids,
)
from tasks.data.yolo import is_yolo_root, is_yolo_spec, read_yolo_splits, yolo_has_split
from tasks.errors import UserError

DEFAULT_SPLITS = {  # valid: Roboflow's exports; default: CVAT's, of a task without subsets (val held out of it)
    "voc": (("trainval", "train", CVAT_SUBSET), ("test", "val")),
    "coco": (("train2017", "train", CVAT_SUBSET), ("val2017", "val", "valid")),
    "kitti": kitti.SPLITS,
    "labelme": labelme.SPLITS,
    "cityscapes": (("train",), ("val",)),
    "bdd100k": bdd100k.SPLITS,
    "widerface": widerface.SPLITS,
}


FORMATS = ("coco", "voc", "yolo", "kitti", "labelme", "cityscapes", "bdd100k", "widerface")
# the formats whose classes are their benchmark's and whose splits read alone: (has_split, read) of each
FIXED_CLASS_READERS: dict[str, tuple[Callable[[Path, str], bool], Callable[[Path, str], DetectionData]]] = {
    "kitti": (kitti.has_split, kitti.read_kitti),
    "cityscapes": (
        lambda root, split: public_sets.has_split(root, "cityscapes", split),
        public_sets.read_cityscapes_detection,
    ),
    "bdd100k": (bdd100k.has_split, bdd100k.read_bdd100k),
    "widerface": (widerface.has_split, widerface.read_widerface),
}


def detect_format(root: Path, given: str) -> str:
    """One of :data:`FORMATS`, or yaml for a dataset YAML of COCO files (``train: {annotations, images}``)."""
    if given in FORMATS:
        return given
    if given != "auto":
        raise UserError(
            f"--format {given!r} is invalid for detection: choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]}"
        )
    if root.is_file() and root.suffix in (".yaml", ".yml"):
        return "yolo" if is_yolo_spec(load_yaml(root)) else "yaml"
    if is_voc_root(root):
        return "voc"
    if is_coco_root(root):
        return "coco"
    if bdd100k.is_bdd100k_root(root):  # before YOLO's images/ and labels/: BDD100K's are images/100k/, labels/det_20/
        return "bdd100k"
    if is_yolo_root(root):
        return "yolo"
    if kitti.is_kitti_root(root):
        return "kitti"
    if widerface.is_widerface_root(root):
        return "widerface"
    if labelme.is_labelme_root(root):
        return "labelme"
    if public_sets.public_set(root) == "cityscapes":
        return "cityscapes"
    if is_paired_voc_root(root):
        return "voc"
    raise UserError(
        f"--data {root}: neither a COCO root (annotations/instances_<split>.json, or Roboflow's "
        f"<split>/_annotations.coco.json), a VOC root (Annotations/ and ImageSets/Main/, or <split>/ with XML "
        f"files beside its images), YOLO data (a data.yaml, or images/<split>/ and labels/<split>/), KITTI's "
        f"(training/image_2/ and training/label_2/), LabelMe's (a .json file beside each image), Cityscapes' "
        f"(leftImg8bit/ and gtFine/), BDD100K's (images/100k/ and labels/det_20/) nor WIDER FACE's (WIDER_train/ and "
        f"wider_face_split/)"
    )


def _defaults(root: Path, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The default (train, val) split names of ``kind``, in the order they are looked for."""
    if kind == "voc" and not is_voc_root(root):
        return PAIRED_SPLITS
    return DEFAULT_SPLITS.get(kind, (("train",), ("val", "valid")))


def _has_split(root: Path, kind: str, name: str) -> bool:
    if kind == "voc":
        return has_split(root, name)
    if kind == "coco":
        return coco_split_file(root, name) is not None
    if kind in FIXED_CLASS_READERS:
        return FIXED_CLASS_READERS[kind][0](root, name)
    if kind == "labelme":
        return labelme.has_split(root, name)
    return yolo_has_split(root, name)  # YOLO data, or a data YAML of COCO files (by its keys)


def _default_split(root: Path, fmt: str, which: int, given: str | None) -> str:
    def exists(candidate: str) -> bool:
        return _has_split(root, fmt, candidate)

    if given:
        return val_or_stand_in(root, given, exists)
    defaults = _defaults(root, fmt)[which]
    return next((c for c in defaults if exists(c)), defaults[0])


def _holdout_split(root: Path, kind: str, train_split: str | None, val_split: str | None) -> str | None:
    """The split that the default train and val splits are held out of, where the data has no val split (nor
    a stand-in): its default train split, or the whole root; None where there is a val split or the splits
    are named."""
    if train_split not in (None, "train") or val_split not in (None, "val"):
        return None
    trains, vals = _defaults(root, kind)

    def present(name: str) -> bool:
        return any(_has_split(root, kind, n) for n in (vals if name == "val" else (name,)))

    return holdout.source_split("val", present, trains)


def load_detection_splits(
    root: Path,
    *,
    fmt: str,
    train_split: str | None,
    val_split: str | None,
    classes: Sequence[str] | None,
    need_train: bool = True,
    val_fraction: float = holdout.DEFAULT_FRACTION,
) -> tuple[DetectionData | None, DetectionData]:
    """(train, val) data; train is None when ``need_train`` is False. Where the data has no val split, the two
    are held out of its train split, or of the whole root (``val_fraction`` of the images to val, see
    :mod:`tasks.data.holdout`)."""
    if not root.exists():
        raise UserError(f"--data {root} does not exist")
    kind = detect_format(root, fmt)
    whole = _holdout_split(root, kind, train_split, val_split)
    if whole is not None:
        _, data = load_detection_splits(
            root, fmt=kind, train_split=None, val_split=whole, classes=classes, need_train=False
        )
        base = root.parent if root.is_file() else root
        rest, held = holdout.parts(data.samples, [holdout.key_of(s.path, base) for s in data.samples], val_fraction)
        holdout.note(root, val_fraction, len(held), len(data.samples))
        origin = data.source.removesuffix(f" ({whole})")
        train = replace(data, samples=rest, source=f"{origin} (the rest)") if need_train else None
        return train, replace(data, samples=held, source=f"{origin} ({val_fraction:.0%} held out)")
    if kind == "yaml":
        return _from_yaml(root, train_split, val_split, need_train)
    if kind == "yolo":
        return read_yolo_splits(
            root, train_split=train_split, val_split=val_split, classes=classes, need_train=need_train
        )
    train_name = _default_split(root, kind, 0, train_split)
    val_name = _default_split(root, kind, 1, val_split)
    if kind in FIXED_CLASS_READERS:
        read = FIXED_CLASS_READERS[kind][1]
        train = _check_nonempty(read(root, train_name)) if need_train else None
        return train, _check_nonempty(read(root, val_name))
    if kind == "labelme":  # each file read once, for the classes and the boxes
        read = {name: labelme.split_documents(root, name) for name in [val_name] + ([train_name] if need_train else [])}
        names = list(classes or [])
        if not classes:
            names, origin = labelme.class_names(root, list(read.values()))
            print(f"classes ({origin}): {', '.join(names)}")
        train = _check_nonempty(labelme.read_labelme(root, train_name, names, read[train_name])) if need_train else None
        return train, _check_nonempty(labelme.read_labelme(root, val_name, names, read[val_name]))
    if kind == "voc":
        splits = [val_name] + ([train_name] if need_train else [])
        names, origin = choose_classes(root, splits, classes)
        if not classes:
            print(f"classes ({origin}): {', '.join(names)}")
        strict = bool(classes)
        train = read_voc(root, train_name, names, strict_classes=strict) if need_train else None
        return train, read_voc(root, val_name, names, strict_classes=strict)
    train = _check_nonempty(read_coco(*find_coco_split(root, train_name))) if need_train else None
    val = read_coco(*find_coco_split(root, val_name))
    if train is not None and train.category_ids != val.category_ids:
        raise UserError(f"{train.source} and {val.source} list different categories")
    return train, _check_nonempty(val)


def _from_yaml(
    path: Path, train_split: str | None, val_split: str | None, need_train: bool
) -> tuple[DetectionData | None, DetectionData]:
    """A dataset YAML: ``train: {annotations: FILE, images: DIR}`` and ``val: {...}``, paths relative to it."""
    spec = load_yaml(path)
    parts = []
    for name in ((train_split or "train") if need_train else None, val_split or "val"):
        if name is None:
            parts.append(None)
            continue
        entry = spec.get(name)
        if not isinstance(entry, dict) or "annotations" not in entry or "images" not in entry:
            raise UserError(f"dataset file {path} needs '{name}: {{annotations: FILE, images: DIR}}'")
        parts.append(read_coco(path.parent / entry["annotations"], path.parent / entry["images"]))
    return parts[0], _check_nonempty(parts[1])


def _check_nonempty(data: DetectionData) -> DetectionData:
    if not data.samples:
        raise UserError(f"{data.source} holds no images")
    return data


__all__ = ["load_detection_splits", "detect_format", "split_ids"]
