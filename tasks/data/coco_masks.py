"""Semantic masks from a COCO instances file's polygons and RLEs, rasterised once into the cache.

Each pixel gets the contiguous label (1..K, category-id order, as detection uses) of the
instance drawn on it, larger instances first so that small ones stay visible; crowd regions
are void (255), and the rest is background (0). The masks are written as PNGs under
``<cache>/coco-masks/<key>/<split>/`` (the key follows the annotation file's path, size and
modification time), in a staging folder renamed into place, so the segmentation loaders and
the multi-task joiner read them like any other masks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.cache import older_copies_note, record_use
from tasks.data.coco import coco_split_file, find_coco_split, read_json, resolve_image, without_umbrella
from tasks.data.embedded import cache_root
from tasks.errors import UserError
from tasks.io import PNG_OPTIONS

IGNORE_INDEX = 255
MASKS_VERSION = 3  # in the cache key: 2 left Roboflow's umbrella category out of the classes, 3 resolved names


def has_coco_polygons(root: Path, split: str) -> bool:
    return coco_split_file(root, split) is not None


def coco_semantic_masks(root: Path, split: str) -> tuple[Path, Path, list[str]]:
    """(image folder, mask folder, class names with "background" first) for ``split`` of a COCO root."""
    from pycocotools.coco import COCO

    annotation_file, image_dir = find_coco_split(root, split)
    data = read_json(annotation_file, kind="annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"annotation file {annotation_file} has no 'images' list")
    categories = without_umbrella(sorted(data.get("categories", []), key=lambda c: c["id"]), data, annotation_file)
    label_of = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
    names = ["background", *(str(c.get("name", c["id"])) for c in categories)]
    stat = annotation_file.stat()
    identity = f"{MASKS_VERSION}|{annotation_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha1(identity.encode()).hexdigest()[:16]
    cached = cache_root() / "coco-masks" / key / split
    source = f"{annotation_file.resolve()} ({split})"
    if cached.is_dir():
        record_use(cached, source)
        return image_dir, cached, names
    annotations = data.get("annotations") or []
    if annotations and not any(isinstance(a, dict) and a.get("segmentation") for a in annotations):
        raise UserError(
            f"annotation file {annotation_file}: none of its {len(annotations)} annotations has a 'segmentation' "
            "(polygons or RLE), which segmentation needs: a detection-only export? (detection reads its boxes)"
        )
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for annotation in annotations:
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    coco = COCO()  # pycocotools' own decoding of every segmentation format, from the file already read
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # its "creating index..." lines
        coco.createIndex()

    def draw(folder: Path) -> None:
        for image in data["images"]:
            height, width = int(image["height"]), int(image["width"])
            mask = np.zeros((height, width), np.uint8)
            instances = sorted(by_image.get(image["id"], []), key=lambda a: -float(a.get("area", 0.0)))
            for annotation in instances:
                segmentation = annotation.get("segmentation")
                if not segmentation or annotation.get("category_id") not in label_of:
                    continue
                pixels = coco.annToMask(annotation).astype(bool)  # polygons, RLE or uncompressed RLE
                mask[pixels] = IGNORE_INDEX if annotation.get("iscrowd") else label_of[annotation["category_id"]]
            save_mask(
                folder / _relative(resolve_image(image_dir, image["file_name"]), image_dir).with_suffix(".png"), mask
            )

    return image_dir, masks_once(cached, draw, source=source), names


def _relative(path: Path, folder: Path) -> Path:
    """The image's path under the image folder, where the masks folder mirrors it."""
    try:
        return path.relative_to(folder)
    except ValueError:
        return Path(path.name)


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path, format="PNG", **PNG_OPTIONS)


def masks_once(target: Path, draw: Callable[[Path], None], *, source: str) -> Path:
    """``target``, a cache folder of mask PNGs, drawn by ``draw(folder)`` into a staging folder beside it and
    renamed into place, so that a run stopped half way, or two runs at once, never leave half a folder. ``source``
    names what it is made from, without the sizes and times in its key (``tasks.cache``): a line says where the
    cache still holds older copies of it. Where ``target`` is already made it is only marked as read (a caller that
    must skip its own work before ``draw`` checks first and calls ``record_use``)."""
    if target.is_dir():
        record_use(target, source)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.parent.name}-", dir=target.parent.parent))
    try:
        draw(staging / target.name)
        (staging / target.name).mkdir(exist_ok=True)  # a split without images
        with contextlib.suppress(OSError):  # another process finished first
            (staging / target.name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record_use(target, source)
    note = older_copies_note(target)
    if note:
        print(note)
    return target
