"""LabelMe's annotation files, for detection and segmentation: one JSON beside each image, in split folders or one
flat folder.

A LabelMe file (``{"shapes": [{"label", "points", "shape_type"}, ...], "imagePath", "imageHeight", "imageWidth"}``)
draws each object as a rectangle (two corners), a polygon, a circle (its centre and a point on it) or a line;
its box is the box around those points (a circle's around its disc). Point shapes have no extent and are skipped,
counted. The classes are the lines of a ``labels.txt`` beside the splits (labelme2coco's, whose ``__ignore__``
and ``_background_`` lines are not classes), else the sorted labels found. The image is the one ``imagePath``
names, relative to the JSON, else the image of the JSON's stem, else the copy that the file embeds (``imageData``,
LabelMe's default when it saves), written once into the cache (:func:`embedded_image`). Splits are ``train`` and
then ``val``, ``valid`` or ``test`` folders, or a flat folder that val is held out of (:mod:`tasks.data.holdout`).
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.data.coco_masks import IGNORE_INDEX
from tasks.data.detection import DetectionData, FixCounts, pixel_sample, readable_size
from tasks.data.embedded import cache_root
from tasks.data.images import READ_ERRORS, image_size, is_image_file
from tasks.errors import UserError
from tasks.io import atomic_write, read_text

if TYPE_CHECKING:
    from tasks.data.segmentation import SegmentationSample

SPLITS = (("train",), ("val", "valid", "test"))
NOT_CLASSES = ("__ignore__", "_background_")
EXTENT = ("rectangle", "polygon", "circle", "line", "linestrip")
IMAGE = "_image"  # the document key (not LabelMe's) of its image: the file found, or the cached copy of its imageData


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def _is_labelme_file(path: Path) -> bool:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and "shapes" in document and "imagePath" in document


def has_split(root: Path, split: str) -> bool:
    folder = root / split
    files = _files(folder) if folder.is_dir() else []
    return bool(files) and _is_labelme_file(files[0])


def is_labelme_root(root: Path) -> bool:
    return root.is_dir() and any(has_split(root, s) for s in (".", *SPLITS[0], *SPLITS[1]))


def class_names(root: Path, splits: Sequence[Sequence[tuple[Path, dict[str, Any]]]]) -> tuple[list[str], str]:
    """The classes and where they came from: ``labels.txt``, else the sorted labels of the splits' documents
    (:func:`split_documents`)."""
    listing = root / "labels.txt"
    if listing.is_file():
        names = [n.strip() for n in read_text(listing, kind="class list").splitlines() if n.strip()]
        return [n for n in names if n not in NOT_CLASSES], str(listing)
    found = {str(shape.get("label", "")) for split in splits for _, document in split for shape in document["shapes"]}
    return sorted(found), "the sorted labels of the LabelMe files"


def _document(path: Path) -> dict[str, Any]:
    """A LabelMe file, checked, without its ``imageData`` (an embedded copy of the image, often most of the file),
    with its image found once and named under ``IMAGE``: the image file, else that copy, written to the cache (absent
    where there is neither)."""
    try:
        document = json.loads(read_text(path, kind="LabelMe file"))
    except ValueError as error:
        raise UserError(f"LabelMe file {path} is not valid JSON ({error})") from None
    shapes = document.get("shapes") if isinstance(document, dict) else None
    if not isinstance(shapes, list) or not all(isinstance(s, dict) for s in shapes):
        raise UserError(f"LabelMe file {path} has no 'shapes' list of objects")
    data = document.pop("imageData", None)
    image = _image_file(document, path) or (embedded_image(path, data) if data else None)
    if image is not None:
        document[IMAGE] = str(image)
    return document


def embedded_image(path: Path, data: Any) -> Path:
    """The image a LabelMe file embeds (``imageData``: the base64 of an image file's bytes, as LabelMe saves it),
    written once under ``<cache>/labelme-images/``, named by the file's path, size and modification time and
    suffixed by the format its bytes hold (an undecodable image is written all the same: the loader skips and
    counts it, as it does an unreadable image file)."""
    from PIL import Image

    if not isinstance(data, str):
        raise UserError(f"LabelMe file {path}: its imageData is not a base64 string")
    try:
        raw = base64.b64decode(data)
    except (binascii.Error, ValueError):
        raise UserError(f"LabelMe file {path}: its imageData is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            suffix = {"JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif"}.get(str(image.format), f".{image.format}".lower())
    except (OSError, ValueError):
        suffix = ".png"
    if not is_image_file(Path(f"image{suffix}")):
        suffix = ".png"
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    target = cache_root() / "labelme-images" / f"{key}{suffix}"
    if not target.is_file():
        atomic_write(target, lambda handle: handle.write(raw))
    return target


def split_documents(root: Path, split: str) -> list[tuple[Path, dict[str, Any]]]:
    """Each LabelMe file of ``split`` (``.``: the root's own files) with its document, each file read once."""
    folder = root / split
    files = _files(folder) if folder.is_dir() else []
    if not files:
        raise UserError(f"--data {root} has no LabelMe split '{split}': expected {folder}/ with .json files")
    return [(path, _document(path)) for path in files]


def _box(shape: dict[str, Any], path: Path, index: int) -> list[float] | None:
    """The box around a shape's points (a circle's disc); None for a shape without extent."""
    kind = shape.get("shape_type") or "polygon"
    if kind not in EXTENT:
        return None
    try:
        points = np.array(shape.get("points"), dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        points = np.zeros((0, 2))
    if len(points) < 2:
        raise UserError(f"LabelMe file {path}, shape {index + 1} ({kind}): expected at least 2 points")
    if kind == "circle":
        (cx, cy), edge = points[0], points[1]
        r = math.dist((cx, cy), edge)
        return [cx - r, cy - r, cx + r, cy + r]
    return [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()]


def _image_file(document: dict[str, Any], path: Path) -> Path | None:
    """The image file ``imagePath`` names, relative to the LabelMe file, else one of the file's stem beside it."""
    named = document.get("imagePath")
    if isinstance(named, str) and named:
        candidate = path.parent / named.replace("\\", "/")
        if candidate.is_file():
            return candidate
    beside = sorted(p for p in path.parent.glob(f"{glob.escape(path.stem)}.*") if is_image_file(p))
    return beside[0] if beside else None


def _image_of(document: dict[str, Any], path: Path) -> Path:
    """The image :func:`_document` found for the file; a one-line error where it found none."""
    if IMAGE not in document:
        named = document.get("imagePath")
        raise UserError(
            f"LabelMe file {path}: its image {named!r} is not beside it, nor an image named {path.stem}.*, "
            "and it embeds none (imageData)"
        )
    return Path(document[IMAGE])


def read_labelme(
    root: Path, split: str, names: Sequence[str], documents: Sequence[tuple[Path, dict[str, Any]]]
) -> DetectionData:
    """One split from its :func:`split_documents`, labels 1..K in ``names``' order; a label not among them is an
    error naming the file."""
    folder = root / split
    label_of = {name: index + 1 for index, name in enumerate(names)}
    fixes, samples, pointless = FixCounts(), [], 0
    for path, document in documents:
        shapes, image = document["shapes"], _image_of(document, path)
        size = readable_size(image, fixes)
        if size is None:
            continue
        boxes, labels = [], []
        for index, shape in enumerate(shapes):
            label = str(shape.get("label", ""))
            if label in NOT_CLASSES:
                continue
            if label not in label_of:
                raise UserError(f"LabelMe file {path}: label {label!r} is not a class ({', '.join(names)})")
            box = _box(shape, path, index)
            if box is None:
                pointless += 1
                continue
            boxes.append(box)
            labels.append(label_of[label])
        image_id = path.relative_to(folder).with_suffix("").as_posix()
        samples.append(pixel_sample(image_id, image, size, boxes, labels, fixes))
    if pointless:
        print(f"note: {folder}: skipped {pointless} point shape(s), which have no box")
    return DetectionData(samples, list(names), list(range(1, len(names) + 1)), f"{root} ({split})", fixes)


# ---- segmentation: the shapes drawn as masks ----

MASKS_VERSION = 1  # in the cache key


def _area(kind: str, points: np.ndarray) -> float:
    if kind == "circle":
        return math.pi * math.dist(points[0], points[1]) ** 2
    if kind == "rectangle":
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        return float((x2 - x1) * (y2 - y1))
    xs, ys = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))  # the shoelace formula


def semantic_mask(path: Path, document: dict[str, Any], label_of: dict[str, int]) -> np.ndarray:
    """The (H, W) uint8 mask of one LabelMe file: each pixel the class of the shape on it (larger shapes first, so
    that small ones stay visible), 0 background, ``__ignore__`` shapes void (255). Polygons and rectangles are
    rasterised by pycocotools, as the COCO masks are; a circle is its disc; lines and points have no area."""
    from pycocotools import mask as coco_mask

    try:  # the image's own size: the shapes are in its pixels, whatever imageHeight and imageWidth say
        width, height = image_size(_image_of(document, path))
    except READ_ERRORS:  # the loader skips and counts the image; its mask need only exist
        height, width = document.get("imageHeight"), document.get("imageWidth")
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            height = width = 1
    mask = np.zeros((height, width), np.uint8)
    drawn = []
    for index, shape in enumerate(document["shapes"]):
        kind = shape.get("shape_type") or "polygon"
        if kind not in ("polygon", "rectangle", "circle"):
            continue
        label = str(shape.get("label", ""))
        value = IGNORE_INDEX if label == NOT_CLASSES[0] else label_of.get(label)
        if value is None:
            names = ", ".join(n for n in label_of if n not in NOT_CLASSES)
            raise UserError(f"LabelMe file {path}: label {label!r} is not a class ({names})")
        _box(shape, path, index)  # checks the points
        points = np.array(shape["points"], dtype=np.float64).reshape(-1, 2)
        drawn.append((_area(kind, points), kind, points, value))
    for _, kind, points, value in sorted(drawn, key=lambda item: -item[0]):
        if kind == "circle":
            ys, xs = np.mgrid[0:height, 0:width]
            (cx, cy), radius = points[0], math.dist(points[0], points[1])
            pixels = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= radius**2  # pixel centres in the disc
        else:
            if kind == "rectangle":
                (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
                points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
            polygon = coco_mask.frPyObjects([points.ravel().tolist()], height, width)
            pixels = coco_mask.decode(polygon)[:, :, 0].astype(bool)
        mask[pixels] = value
    return mask


def labelme_segmentation(
    root: Path, split: str, classes: Sequence[str] | None
) -> tuple[list[SegmentationSample], list[str]]:
    """The split's images with masks drawn from their LabelMe files once, into the cache, and the class names:
    ``background`` then the classes (the given list, which names the background first, else labels.txt's or the
    sorted labels)."""
    from tasks.data.colour_masks import converted_samples
    from tasks.data.segmentation import SegmentationSample

    folder, documents = root / split, split_documents(root, split)
    names = list(classes) if classes else ["background", *class_names(root, [documents])[0]]
    label_of = {name: index for index, name in enumerate(names)} | {NOT_CLASSES[1]: 0}
    samples = [
        SegmentationSample(path.relative_to(folder).with_suffix("").as_posix(), _image_of(document, path), path)
        for path, document in documents
    ]
    by_path = dict(documents)

    def draw(path: Path) -> np.ndarray:
        return semantic_mask(path, by_path[path], label_of)

    identity = f"labelme|{MASKS_VERSION}|{'|'.join(names)}"
    return converted_samples(samples, "labelme-masks", identity, draw), names
