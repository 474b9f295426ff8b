"""COCO-format detection data: ``annotations/instances_<split>.json`` (or Roboflow's
``<split>/_annotations.coco.json``) and the images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.detection import DetectionData, DetectionSample, FixCounts, clean_boxes
from tasks.data.holdout import WHOLE
from tasks.data.images import READ_ERRORS, image_size
from tasks.errors import UserError
from tasks.io import read_text

ROBOFLOW_FILE = "_annotations.coco.json"  # Roboflow's COCO export: <split>/ holds it beside the split's images
LABEL_STUDIO_FILE = "result.json"  # Label Studio's COCO export: one file beside images/, names relative to it


def coco_split_file(root: Path, split: str) -> Path | None:
    """The annotation file of ``split``: ``annotations/instances_<split>.json`` (COCO 2017's layout) or
    ``<split>/_annotations.coco.json`` (Roboflow's export), if either exists; for the whole root
    (:data:`holdout.WHOLE`), Label Studio's ``result.json``."""
    if split == WHOLE:
        return root / LABEL_STUDIO_FILE if _is_label_studio(root) else None
    for path in (root / "annotations" / f"instances_{split}.json", root / split / ROBOFLOW_FILE):
        if path.is_file():
            return path
    return None


def _is_label_studio(root: Path) -> bool:
    return (root / LABEL_STUDIO_FILE).is_file() and (root / "images").is_dir()


def is_coco_root(root: Path) -> bool:
    return (
        (root / "annotations").is_dir()
        or _is_label_studio(root)
        or any((root / split / ROBOFLOW_FILE).is_file() for split in ("train", "valid", "val", "test"))
    )


def resolve_image(image_dir: Path, file_name: str) -> Path:
    """Where an images entry's file is: its ``file_name`` under the image folder; else, as exporters on Windows
    write it (Label Studio: ``images\\<name>``, or a path to its own media folder), that name with forward
    slashes, or its last part in ``images/`` or the image folder. The first candidate where none exists."""
    given = image_dir / file_name
    if given.is_file():
        return given
    name = file_name.replace("\\", "/")
    for candidate in (image_dir / name, image_dir / "images" / Path(name).name, image_dir / Path(name).name):
        if candidate.is_file():
            return candidate
    return given


def find_coco_split(root: Path, split: str) -> tuple[Path, Path]:
    """The annotation file and image folder of ``split`` in a COCO 2017-style root or a Roboflow export."""
    annotations = coco_split_file(root, split)
    if annotations is None:
        raise UserError(
            f"--data {root} has no COCO split '{split}': expected {root / 'annotations' / f'instances_{split}.json'} "
            f"or {root / split / ROBOFLOW_FILE}"
        )
    if annotations.name in (ROBOFLOW_FILE, LABEL_STUDIO_FILE):
        return annotations, annotations.parent
    for images in (root / split, root / "images" / split, root / "images"):
        if images.is_dir():
            return annotations, images
    raise UserError(
        f"--data {root}: no image folder for split '{split}' (looked for {root / split} and {root / 'images' / split})"
    )


def read_coco(annotation_file: Path, image_dir: Path) -> DetectionData:
    """Read a COCO instances file; ids are mapped to contiguous labels in category-id order.

    What a user's exporter may leave out is filled in and counted (``DetectionData.fixes``): a box from the
    annotation's segmentation (pycocotools' ``toBbox``) when it has no ``bbox``; an image's size from its
    file when its entry has no ``width``/``height``. Entries of the wrong shape are one-line errors.
    """
    data = _load_json(annotation_file)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"annotation file {annotation_file} has no '{key}' list")
    if not isinstance(data.get("annotations", []), list):
        raise UserError(f"annotation file {annotation_file}: 'annotations' must be a list")

    def bad(kind: str, index: int, problem: str) -> UserError:
        return UserError(f"annotation file {annotation_file}: {kind} entry {index} {problem}")

    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise bad("categories", index, "needs an integer 'id'")
    categories = without_umbrella(sorted(data["categories"], key=lambda c: int(c["id"])), data, annotation_file)
    category_ids = [int(c["id"]) for c in categories]
    label_of = {cid: index + 1 for index, cid in enumerate(category_ids)}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for index, annotation in enumerate(data.get("annotations", [])):
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            raise bad("annotations", index, "needs an 'image_id'")
        if annotation.get("category_id") not in label_of:
            raise UserError(
                f"annotation file {annotation_file}: annotation {annotation.get('id')} has unknown "
                f"category_id {annotation.get('category_id')!r}"
            )
        box = annotation.get("bbox")
        if box is not None and box != [] and not (isinstance(box, list) and len(box) == 4 and all(map(is_number, box))):
            raise bad("annotations", index, f"has bbox {box!r}; expected [x, y, width, height]")
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    fixes = FixCounts()
    samples = []
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise bad("images", index, "needs an 'id' and a 'file_name'")
        path = resolve_image(image_dir, image["file_name"])
        if not path.is_file():
            raise UserError(f"image {path} listed in {annotation_file} does not exist")
        width, height = _size(image, path, fixes, f"annotation file {annotation_file}: images entry {index}")
        annotations = []
        for annotation in by_image.get(image["id"], []):
            box = annotation.get("bbox")
            if not box:
                box = _box_from_segmentation(annotation.get("segmentation"), width, height)
                if box is None:
                    continue  # neither a box nor a shape: nothing to learn from
                fixes.derived += 1
            annotations.append((annotation, [float(v) for v in box]))
        boxes = np.array([box for _, box in annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2
        labels = np.array([label_of[a["category_id"]] for a, _ in annotations], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a, _ in annotations], dtype=bool)
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


def without_umbrella(categories: list[dict[str, Any]], data: dict[str, Any], source: Path) -> list[dict[str, Any]]:
    """The categories less Roboflow's umbrella: its COCO exports list the dataset's name as a category of its own
    (id 0), the supercategory of every other one, that no annotation uses. Kept, it would be a class with no
    examples; it is left out, with a note."""
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    for category in categories if len(categories) > 1 else ():
        others = [c for c in categories if c is not category]
        if category["id"] not in used and all(c.get("supercategory") == category.get("name") for c in others):
            print(
                f"note: {source}: category {category['id']} ({category.get('name')!r}) labels nothing and is the "
                "supercategory of all the others (Roboflow's dataset name): left out of the classes"
            )
            return others
    return categories


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a COCO number field may hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(image: dict[str, Any], path: Path, fixes: FixCounts, where: str) -> tuple[int, int]:
    """The entry's (width, height); read from the file (and counted) when the entry has neither."""
    width, height = image.get("width"), image.get("height")
    if width is None and height is None:
        try:
            fixes.sized += 1
            return image_size(path)
        except READ_ERRORS:
            raise UserError(f"{where} has no width/height, and {path} is not a readable image") from None
    if not (is_number(width) and is_number(height) and width > 0 and height > 0):
        raise UserError(f"{where} has width {width!r} and height {height!r}; expected positive numbers")
    return int(width), int(height)


def _box_from_segmentation(segmentation: Any, width: int, height: int) -> list[float] | None:
    """[x, y, w, h] around a COCO segmentation (polygons, or RLE compressed or not), by pycocotools."""
    from pycocotools import mask as coco_mask

    if not segmentation:
        return None
    try:
        if isinstance(segmentation, list):  # polygons
            rles = coco_mask.frPyObjects([p for p in segmentation if len(p) >= 6], height, width)
            if not rles:
                return None
            rle = coco_mask.merge(rles)
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        box = [float(v) for v in coco_mask.toBbox(rle)]
    except (TypeError, ValueError, KeyError):
        return None
    return box if box[2] > 0 and box[3] > 0 else None


def read_json(path: Path, *, kind: str) -> Any:
    """A JSON file's content; a missing file or bad JSON is a one-line error naming the ``kind`` of file."""
    if not path.is_file():
        raise UserError(f"{kind} {path} does not exist")
    try:
        return json.loads(read_text(path, kind=kind))
    except json.JSONDecodeError as error:
        raise UserError(
            f"{kind} {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path, kind="annotation file")
    if not isinstance(data, dict):
        raise UserError(f"annotation file {path} must hold a JSON object, not {type(data).__name__}")
    return data
