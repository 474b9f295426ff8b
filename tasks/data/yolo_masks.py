"""Semantic masks from YOLO segmentation labels (Ultralytics' ``class x1 y1 x2 y2 ...`` polygon lines).

Each pixel gets the class id plus one of the polygon drawn on it (0 is the background), larger polygons first so
that small ones stay visible, as the COCO masks are drawn (:mod:`tasks.data.coco_masks`). The polygons are
rasterised by pycocotools. A line that gives only a box (a detection or pose line) says an object is there but
not its shape: its box is void (255), ignored by the losses and the metrics, and counted. The masks are cached as
PNGs under ``<cache>/yolo-masks/<key>/`` (the key follows every image's and label file's path, size and
modification time), so the segmentation loaders and the multi-task joiner read them like any other masks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.data.coco_masks import IGNORE_INDEX, masks_once, save_mask
from tasks.data.detection import FixCounts
from tasks.data.embedded import cache_root
from tasks.data.yolo import LabelledImage, open_source


def _key(images: Sequence[LabelledImage]) -> str:
    digest = hashlib.sha1()
    for item in images:
        digest.update(f"{item.image.resolve()}|{item.width}x{item.height}|".encode())
        if item.label_file is not None:
            stat = item.label_file.stat()
            digest.update(f"{item.label_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def semantic_mask(item: LabelledImage) -> np.ndarray:
    """The (H, W) uint8 mask of one image's label lines: polygons by pycocotools, boxes void."""
    from pycocotools import mask as coco_mask

    height, width = item.height, item.width
    mask = np.zeros((height, width), np.uint8)
    scale = np.array([width, height], np.float64)

    def area(line) -> float:  # normalised, so that the order does not depend on the image's shape
        if line.polygon is None:
            x1, y1, x2, y2 = line.box
            return (x2 - x1) * (y2 - y1)
        xs, ys = np.asarray(line.polygon[0::2]), np.asarray(line.polygon[1::2])
        return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))  # the shoelace formula

    for line in sorted(item.lines, key=lambda line: -area(line)):
        if line.polygon is None:
            x1, y1, x2, y2 = (np.array(line.box).reshape(2, 2) * scale).ravel()
            mask[max(int(np.floor(y1)), 0) : int(np.ceil(y2)), max(int(np.floor(x1)), 0) : int(np.ceil(x2))] = (
                IGNORE_INDEX
            )
            continue
        points = (np.array(line.polygon, np.float64).reshape(-1, 2) * scale).ravel().tolist()
        pixels = coco_mask.decode(coco_mask.frPyObjects([points], height, width))[:, :, 0].astype(bool)
        mask[pixels] = line.cls + 1
    return mask


def yolo_segmentation(
    source: Path, split: str, *, classes: Sequence[str] | None
) -> tuple[list[tuple[str, Path, Path]], list[str], str]:
    """(image id, image, mask) for each readable image of ``split``, the class names with "background" first,
    and the split's name for messages. ``classes`` (background first) names the classes where no data YAML
    does."""
    yolo = open_source(source, list(classes[1:]) if classes else None)
    which = 1 if split in ("val", "valid", "test") else 0
    found = yolo.split(split, which)
    images, unreadable = yolo.labelled(found)
    names = yolo.names
    if names is None:
        names = yolo.name_by_ids(max((line.cls for item in images for line in item.lines), default=-1))
    fixes = FixCounts(
        voided=sum(line.polygon is None for item in images for line in item.lines),
        unlabelled=sum(item.label_file is None for item in images),
        unreadable=unreadable,
    )
    message = fixes.report(found.source)
    if message:
        print(message)
    cached = cache_root() / "yolo-masks" / _key(images)

    def draw(folder: Path) -> None:
        for item in images:
            save_mask(folder / f"{item.image_id}.png", semantic_mask(item))

    masks_once(cached, draw, source=f"{Path(source).resolve()} ({split})")
    samples = [(item.image_id, item.image, cached / f"{item.image_id}.png") for item in images]
    return samples, ["background", *names], found.source


__all__ = ["semantic_mask", "yolo_segmentation"]
