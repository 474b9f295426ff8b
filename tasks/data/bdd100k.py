"""BDD100K's detection labels, as downloaded: ``images/100k/<split>/*.jpg`` with the 2020 release's
``labels/det_20/det_<split>.json`` or the 2018 release's ``labels/bdd100k_labels_images_<split>.json``.

Each file lists frames, ``{"name": "<image>.jpg", "labels": [{"category", "box2d": {"x1", "y1", "x2", "y2"},
"attributes": {"crowd", ...}}, ...]}`` (``labels`` absent or null for a frame without objects), boxes in pixels.
The classes are the detection benchmark's ten, in the order of bdd100k's ``configs/det.toml``, whose mappings are
applied as its COCO conversion applies them: the 2018 names (person, bike, motor) and caravan and van are renamed to
their classes; "other person", "other vehicle" and trailer are kept as crowd regions of pedestrian, car and truck,
and so is a box whose ``crowd`` attribute is set: not trained on, and ignored by the evaluators. Labels without a
``box2d`` (the 2018 files' drivable areas and lanes) are not objects. Splits are ``train`` and ``val`` (``test`` has
no labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.data.detection import DetectionData, FixCounts, pixel_sample, readable_size
from tasks.errors import UserError
from tasks.io import read_text

CLASSES = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light", "traffic sign",
)  # fmt: skip
RENAMED = {"bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car"}
IGNORED = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}  # crowd regions of these
LABEL_FILES = ("labels/det_20/det_{split}.json", "labels/bdd100k_labels_images_{split}.json")
SPLITS = (("train",), ("val",))


def _images(root: Path, split: str) -> Path:
    return root / "images" / "100k" / split


def label_file(root: Path, split: str) -> Path | None:
    return next((root / f.format(split=split) for f in LABEL_FILES if (root / f.format(split=split)).is_file()), None)


def has_split(root: Path, split: str) -> bool:
    return _images(root, split).is_dir() and label_file(root, split) is not None


def is_bdd100k_root(root: Path) -> bool:
    return root.is_dir() and (root / "images" / "100k").is_dir() and any(has_split(root, s) for s in ("train", "val"))


def _frames(path: Path) -> list[dict[str, Any]]:
    try:
        frames = json.loads(read_text(path, kind="label file"))
    except ValueError as error:
        raise UserError(f"label file {path} is not valid JSON ({error})") from None
    if isinstance(frames, dict) and isinstance(frames.get("frames"), list):  # Scalabel's dataset form
        frames = frames["frames"]
    if not isinstance(frames, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in frames):
        raise UserError(f"label file {path}: expected a list of frames, each with a 'name'")
    return frames


def _box(label: dict[str, Any], path: Path, name: str) -> list[float]:
    box = label["box2d"]
    try:
        return [float(box[k]) for k in ("x1", "y1", "x2", "y2")]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"label file {path}, frame {name}: a box2d is not {{x1, y1, x2, y2}} numbers") from None


def read_bdd100k(root: Path, split: str) -> DetectionData:
    """The split's frames with their boxes (labels 1..10 in :data:`CLASSES` order); a frame whose image cannot be
    read is skipped and counted."""
    path = label_file(root, split)
    if path is None or not _images(root, split).is_dir():
        expected = " or ".join(f.format(split=split) for f in LABEL_FILES)
        raise UserError(f"--data {root} (BDD100K) has no split {split!r}: expected images/100k/{split}/ and {expected}")
    label_of = {name: index + 1 for index, name in enumerate(CLASSES)}
    fixes, samples, crowds = FixCounts(), [], 0
    for frame in _frames(path):
        name = frame["name"]
        image = _images(root, split) / name
        size = readable_size(image, fixes)
        if size is None:
            continue
        boxes, labels, crowd = [], [], []
        for label in frame.get("labels") or []:
            if not isinstance(label, dict) or not label.get("box2d"):
                continue
            category = str(label.get("category", ""))
            kept = IGNORED.get(category) or RENAMED.get(category, category)
            if kept not in label_of:
                raise UserError(
                    f"label file {path}, frame {name}: category {category!r} is none of BDD100K's {', '.join(CLASSES)}"
                    f" (nor {', '.join([*RENAMED, *IGNORED])})"
                )
            boxes.append(_box(label, path, name))
            labels.append(label_of[kept])
            attributes = label.get("attributes")
            crowd.append(category in IGNORED or bool(isinstance(attributes, dict) and attributes.get("crowd")))
        crowds += sum(crowd)
        samples.append(pixel_sample(Path(name).stem, image, size, boxes, labels, fixes, crowd=crowd))
    if crowds:
        print(f"note: {root} ({split}): {crowds} crowd or other-class box(es) are not trained on, ignored in scoring")
    return DetectionData(samples, list(CLASSES), list(range(1, len(CLASSES) + 1)), f"{root} ({split})", fixes)
