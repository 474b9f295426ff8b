"""COCO-format detection data: ``annotations/instances_<split>.json`` and the images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.detection import DetectionData, DetectionSample, FixCounts, clean_boxes
from tasks.errors import UserError


def find_coco_split(root: Path, split: str) -> tuple[Path, Path]:
    """The annotation file and image folder of ``split`` in a COCO 2017-style root."""
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise UserError(f"--data {root} has no COCO split '{split}': expected {annotations}")
    for images in (root / split, root / "images" / split, root / "images"):
        if images.is_dir():
            return annotations, images
    raise UserError(
        f"--data {root}: no image folder for split '{split}' (looked for {root / split} and {root / 'images' / split})"
    )


def read_coco(annotation_file: Path, image_dir: Path) -> DetectionData:
    """Read a COCO instances file; ids are mapped to contiguous labels in category-id order."""
    data = _load_json(annotation_file)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"annotation file {annotation_file} has no '{key}' list")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in categories]
    label_of = {cid: index + 1 for index, cid in enumerate(category_ids)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in data.get("annotations", []):
        if annotation.get("category_id") not in label_of:
            raise UserError(
                f"annotation file {annotation_file}: annotation {annotation.get('id')} has unknown "
                f"category_id {annotation.get('category_id')!r}"
            )
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    fixes = FixCounts()
    samples = []
    for image in data["images"]:
        path = image_dir / image["file_name"]
        if not path.is_file():
            raise UserError(f"image {path} listed in {annotation_file} does not exist")
        width, height = int(image["width"]), int(image["height"])
        annotations = [a for a in by_image.get(image["id"], []) if len(a.get("bbox", [])) == 4]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2
        labels = np.array([label_of[a["category_id"]] for a in annotations], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
        valid = clean_boxes(boxes, width, height, fixes)
        samples.append(
            DetectionSample(
                image["id"],
                path,
                width,
                height,
                boxes[valid],
                labels[valid],
                crowd[valid],
                np.zeros(int(valid.sum()), bool),
            )
        )
    names = [str(c.get("name", c["id"])) for c in categories]
    return DetectionData(samples, names, category_ids, source=str(annotation_file), fixes=fixes)


def read_json(path: Path, *, kind: str) -> Any:
    """A JSON file's content; a missing file or bad JSON is a one-line error naming the ``kind`` of file."""
    if not path.is_file():
        raise UserError(f"{kind} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(
            f"{kind} {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"{kind} {path} is not UTF-8 text") from None


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path, kind="annotation file")
    if not isinstance(data, dict):
        raise UserError(f"annotation file {path} must hold a JSON object, not {type(data).__name__}")
    return data
