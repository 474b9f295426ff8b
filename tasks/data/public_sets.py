"""The layouts of two public segmentation benchmarks, read as they are downloaded.

**ADE20K** (the scene-parsing release, ``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` with
``annotations/{training,validation}/*.png`` of the same stem, and ``objectInfo150.txt`` (or the ``.csv`` of the
benchmark's repository) naming the 150 classes. A mask's 0 is "other objects", which the benchmark does not score:
it becomes void (255) and class k becomes k - 1, as mmsegmentation's ``reduce_zero_label`` does.

**Cityscapes**: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` where cityscapesscripts' ``createTrainIdLabelImgs`` wrote
it, else ``<name>_gtFine_labelIds.png``, whose 34 label ids become the benchmark's 19 train ids (the others void),
by the table of cityscapesscripts' ``labels.py``.

Masks that need their values changed are changed once, into PNGs under ``<cache>/<set>-masks/<key>`` (as colour
masks are: :func:`tasks.data.colour_masks.converted_samples`), and read from there like any other masks.
``train`` and ``val`` find ADE20K's ``training`` and ``validation`` (:func:`tasks.data.holdout.other_names`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tasks.data.colour_masks import converted_samples
from tasks.data.images import is_image_file
from tasks.errors import UserError
from tasks.io import read_text

if TYPE_CHECKING:
    from tasks.data.segmentation import SegmentationSample

ADE_CLASS_FILES = ("objectInfo150.txt", "objectInfo150.csv")
# cityscapesscripts' labels.py: the label id of each of the 19 classes the benchmark scores, in train-id order
CITYSCAPES_CLASSES = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"), (19, "traffic light"),
    (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"), (24, "person"), (25, "rider"), (26, "car"),
    (27, "truck"), (28, "bus"), (31, "train"), (32, "motorcycle"), (33, "bicycle"),
)  # fmt: skip
CITYSCAPES_IMAGE, CITYSCAPES_TRAIN_IDS, CITYSCAPES_LABEL_IDS = (
    "_leftImg8bit",
    "_gtFine_labelTrainIds",
    "_gtFine_labelIds",
)
VERSION = 1  # in the cache keys


def public_set(root: Path) -> str | None:
    """``"ade20k"``, ``"cityscapes"`` or None, from the layout of ``root``."""
    if not root.is_dir():
        return None
    if (root / "images").is_dir() and (root / "annotations").is_dir() and _ade_class_file(root) is not None:
        return "ade20k"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    return None


def has_split(root: Path, kind: str, split: str) -> bool:
    if kind == "ade20k":
        return (root / "images" / split).is_dir() and (root / "annotations" / split).is_dir()
    return (root / "leftImg8bit" / split).is_dir() and (root / "gtFine" / split).is_dir()


def read_public_split(root: Path, kind: str, split: str) -> tuple[list[SegmentationSample], list[str]]:
    """The samples of ``split``, their masks as class indices with 255 void, and the class names."""
    if not has_split(root, kind, split):
        folders = "images/ and annotations/" if kind == "ade20k" else "leftImg8bit/ and gtFine/"
        raise UserError(f"--data {root} ({kind}) has no split {split!r}: expected {split}/ under {folders}")
    return _ade20k(root, split) if kind == "ade20k" else _cityscapes(root, split)


def _ade_class_file(root: Path) -> Path | None:
    return next((root / name for name in ADE_CLASS_FILES if (root / name).is_file()), None)


def ade_class_names(path: Path) -> list[str]:
    """The class names of ``objectInfo150.txt`` (tab-separated ``Idx Ratio Train Val Name``) or of its ``.csv``
    (``Idx,Ratio,Train,Val,Stuff,Name``), in index order: each name's first synonym (``building, edifice`` or
    ``building;edifice`` is ``building``)."""
    is_csv = path.suffix == ".csv"
    rows: dict[int, str] = {}
    for number, line in enumerate(read_text(path, kind="class list").splitlines(), start=1):
        if not line.strip() or number == 1:  # the header
            continue
        fields = _csv_fields(line) if is_csv else line.split("\t")
        try:
            index = int(fields[0])
        except ValueError:
            index = 0
        name = fields[-1].strip().strip('"').replace(";", ",").split(",")[0].strip() if len(fields) > 1 else ""
        if index < 1 or not name or index in rows:
            raise UserError(f"class list {path}, line {number}: expected a new index from 1 and a name, got {line!r}")
        rows[index] = name
    if sorted(rows) != list(range(1, len(rows) + 1)) or len(rows) < 2:
        raise UserError(f"class list {path}: expected indices 1..K (K ≥ 2) with no gaps, got {len(rows)} rows")
    return [rows[i] for i in range(1, len(rows) + 1)]


def _csv_fields(line: str) -> list[str]:
    import csv

    return next(csv.reader([line]))


def _ade20k(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    from tasks.data.segmentation import SegmentationSample

    class_file = _ade_class_file(root)
    assert class_file is not None
    names = ade_class_names(class_file)
    images, masks = root / "images" / split, root / "annotations" / split
    samples = [
        SegmentationSample(
            p.relative_to(images).with_suffix("").as_posix(), p, (masks / p.relative_to(images)).with_suffix(".png")
        )
        for p in sorted(p for p in images.rglob("*") if p.is_file() and is_image_file(p))
    ]
    table = np.full(256, 255, np.uint8)  # 0 ("other objects") and any value past the classes: void
    table[1 : len(names) + 1] = np.arange(len(names), dtype=np.uint8)
    identity = f"ade20k|{VERSION}|{len(names)}"
    return converted_samples(samples, "ade20k-masks", identity, lambda path: _looked_up(path, table)), names


def _cityscapes(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    from tasks.data.segmentation import SegmentationSample

    images, masks = root / "leftImg8bit" / split, root / "gtFine" / split
    ready, to_convert = [], []
    for image in sorted(images.rglob(f"*{CITYSCAPES_IMAGE}.png")):
        relative = image.relative_to(images)
        stem = relative.name.removesuffix(f"{CITYSCAPES_IMAGE}.png")
        image_id = (relative.parent / stem).as_posix()
        train_ids = masks / relative.parent / f"{stem}{CITYSCAPES_TRAIN_IDS}.png"
        if train_ids.is_file():
            ready.append(SegmentationSample(image_id, image, train_ids))
        else:  # a missing mask is named by the reader's check
            to_convert.append(
                SegmentationSample(image_id, image, masks / relative.parent / f"{stem}{CITYSCAPES_LABEL_IDS}.png")
            )
    table = np.full(256, 255, np.uint8)
    for train_id, (label_id, _) in enumerate(CITYSCAPES_CLASSES):
        table[label_id] = train_id
    converted = converted_samples(
        to_convert, "cityscapes-masks", f"cityscapes|{VERSION}", lambda path: _looked_up(path, table)
    )
    samples = sorted(ready + converted, key=lambda s: s.image_id)
    return samples, [name for _, name in CITYSCAPES_CLASSES]


def _looked_up(path: Path, table: np.ndarray) -> np.ndarray:
    """The (H, W) uint8 mask of ``table[value]`` for each pixel of the single-channel PNG at ``path``."""
    from tasks.data.segmentation import MASK_MODES

    with Image.open(path) as mask:
        if mask.mode not in MASK_MODES:
            raise UserError(f"mask {path} is {mask.mode}: expected a single-channel PNG of label ids")
        values = np.asarray(mask, dtype=np.int64)  # a palette PNG's indices are its values
    if values.min() < 0 or values.max() > 255:
        raise UserError(f"mask {path} has label ids outside 0..255")
    return table[values]
