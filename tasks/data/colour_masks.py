"""Colour-coded masks: each class a colour, named by a colour map beside the data, turned into class indices once.

CVAT's "Segmentation mask" export (Pascal VOC's layout with ``ImageSets/Segmentation/default.txt``) paints each
class in the colour its ``labelmap.txt`` gives (``name:r,g,b:parts:actions``, one line a class), and CamVid-style
sets ship RGB masks with a ``class_dict.csv`` (``name,r,g,b``). Where a segmentation root holds either file, its
masks are read as colours: each pixel becomes the position of its colour in the map (palette PNGs are looked up
through their palette), written once as PNGs of class indices under ``<cache>/colour-masks/<key>/`` (the key
follows the map and each mask's path, size and modification time), and read from there like any other masks. A
colour the map does not list stops the run with one line naming the mask and the colour.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tasks.data.coco_masks import masks_once, save_mask
from tasks.data.embedded import cache_root
from tasks.errors import UserError
from tasks.io import read_text

if TYPE_CHECKING:
    from tasks.data.segmentation import SegmentationSample

MAP_FILES = ("labelmap.txt", "class_dict.csv")
VERSION = 1  # in the cache key


def find_colour_map(root: Path) -> Path | None:
    for name in MAP_FILES:
        if (root / name).is_file():
            return root / name
    return None


def read_colour_map(path: Path) -> tuple[list[str], np.ndarray]:
    """The class names and their (K, 3) RGB colours, in the file's order."""
    names, colours = [], []
    csv = path.suffix == ".csv"
    for number, line in enumerate(read_text(path, kind="colour map").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")] if csv else line.split(":")
        if csv and number == 1 and fields[0].lower() == "name":
            continue  # the header
        rgb = fields[1:4] if csv else fields[1].split(",") if len(fields) > 1 else []
        try:
            colour = [int(v) for v in rgb]
        except ValueError:
            colour = []
        if not fields[0] or len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
            shape = "'name,r,g,b'" if csv else "'name:r,g,b:parts:actions'"
            raise UserError(f"colour map {path}, line {number}: expected {shape} with 0..255 colours, got {line!r}")
        names.append(fields[0])
        colours.append(colour)
    if len(names) < 2:
        raise UserError(f"colour map {path} names {len(names)} class(es); segmentation needs at least 2")
    packed = [r << 16 | g << 8 | b for r, g, b in colours]
    if len(set(packed)) < len(packed):
        raise UserError(f"colour map {path} gives two classes the same colour")
    return names, np.array(colours, dtype=np.int64)


def index_mask(path: Path, colours: np.ndarray, map_path: Path) -> np.ndarray:
    """The (H, W) uint8 class indices of a colour-coded mask."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    packed = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
    keys = colours[:, 0] << 16 | colours[:, 1] << 8 | colours[:, 2]
    order = np.argsort(keys)
    found = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
    unknown = keys[order][found] != packed
    if unknown.any():
        value = int(packed[unknown][0])
        colour = (value >> 16, value >> 8 & 255, value & 255)
        raise UserError(
            f"mask {path} has {int(unknown.sum())} pixel(s) of colour {colour}, "
            f"which colour map {map_path} does not list"
        )
    return order[found].astype(np.uint8)


def indexed_samples(
    samples: Sequence[SegmentationSample], map_path: Path, colours: np.ndarray
) -> list[SegmentationSample]:
    """``samples`` with their masks turned into class indices once, in the cache."""
    identity = f"{VERSION}\n{map_path.read_bytes().hex()}"
    return converted_samples(samples, "colour-masks", identity, lambda path: index_mask(path, colours, map_path))


def converted_samples(
    samples: Sequence[SegmentationSample], kind: str, identity: str, convert: Callable[[Path], np.ndarray]
) -> list[SegmentationSample]:
    """``samples`` with each mask that exists replaced by ``convert(mask)`` (class indices, 255 void), written
    once as PNGs under ``<cache>/<kind>/<key>``: the key follows ``identity`` (what the conversion depends on) and
    each mask's path, size and modification time. A missing mask is left for the reader's check to name."""
    present = [s.mask is not None and s.mask.is_file() for s in samples]
    painted = [s for s, p in zip(samples, present) if p]
    resolved = [str(s.mask.resolve()) for s in painted]
    parts = [identity]
    for sample, path in zip(painted, resolved):
        stat = sample.mask.stat()
        parts.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}")
    key = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]
    target = cache_root() / kind / key

    def draw(folder: Path) -> None:
        for sample in painted:
            save_mask(folder / f"{sample.image_id}.png", convert(sample.mask))

    # the same masks, whatever their content and the conversion's identity: a newer copy replaces this one
    paths = sorted(resolved)
    common = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "no folder"
    count = f"{len(paths)} mask{'' if len(paths) == 1 else 's'}"
    digest = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:8]
    folder = masks_once(target, draw, source=f"{count} in {common} ({digest})")
    return [replace(s, mask=folder / f"{s.image_id}.png") if p else s for s, p in zip(samples, present)]
