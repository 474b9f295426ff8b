"""KITTI's 2D object detection layout, as downloaded (``data_object_image_2`` and ``data_object_label_2``).

``<split>/image_2/<id>.png`` with ``<split>/label_2/<id>.txt``: one object a line, ``type truncated occluded alpha
left top right bottom h w l x y z rotation_y`` (15 fields; 16 with a score), the box in pixels, as
``torchvision.datasets.Kitti`` reads it. The classes are KITTI's eight, in the benchmark's order. ``DontCare``
lines mark regions whose objects were not labelled: they are not trained on (as mmdetection's KITTI conversion
leaves them out), and a detection of any class inside one is ignored by the evaluators, as KITTI's own evaluation
ignores it (each region is a crowd region of every class: COCO's evaluator ignores a detection that lies mostly
inside a crowd region of its class; the VOC protocol one that overlaps it by its IoU threshold). KITTI releases only
``training`` with labels (``testing`` has none): where ``ImageSets/train.txt`` and ``val.txt`` list its images (the
3DOP split that mmdetection3d and OpenPCDet ship), those are the train and val splits; else the runners hold out a
val split of it (:mod:`tasks.data.holdout`).
Each sample also keeps its label file as written (:class:`KittiTruth`: types, unclipped boxes, truncation and
occlusion), which the evaluation scores with KITTI's own protocol too: easy, moderate and hard AP for Car,
Pedestrian and Cyclist (:mod:`tasks.metrics.kitti`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.detection import DetectionData, FixCounts, clean_boxes, pixel_sample, readable_size
from tasks.data.images import is_image_file
from tasks.errors import UserError
from tasks.io import read_text

CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
DONT_CARE = "DontCare"
# default (train, val) names: ImageSets/train.txt and val.txt where a root has them, else the training folder, whose
# val is held out
SPLITS = (("train", "training"), ("val", "validation"))
TRAINING_LISTS = ("train", "val", "trainval")  # ImageSets' lists of training/ images


@dataclass(frozen=True)
class KittiTruth:
    """One image's label file as the devkit reads it: every line's type (DontCare too), box as written
    (x1 y1 x2 y2, not clipped), truncation and occlusion."""

    types: tuple[str, ...]
    boxes: np.ndarray  # (N, 4) float64
    truncated: np.ndarray  # (N,) float64
    occluded: np.ndarray  # (N,) int64


def is_kitti_root(root: Path) -> bool:
    return root.is_dir() and has_split(root, "training")


def _folder(root: Path, split: str) -> bool:
    return (root / split / "image_2").is_dir() and (root / split / "label_2").is_dir()


def _listed(root: Path, split: str) -> Path | None:
    """``ImageSets/<split>.txt`` (one image id a line, ids of ``training/``) for ``train``, ``val`` and
    ``trainval``: the 3DOP split of 3,712 and 3,769 images that mmdetection3d and OpenPCDet ship and report on. Their
    ``test.txt`` lists ``testing/``'s ids, which are also ``training/``'s numbers, so it is never read here."""
    listing = root / "ImageSets" / f"{split}.txt"
    listed = split in TRAINING_LISTS and not _folder(root, split) and _folder(root, "training")
    return listing if listed and listing.is_file() else None


def has_split(root: Path, split: str) -> bool:
    return _folder(root, split) or _listed(root, split) is not None


def read_kitti(root: Path, split: str) -> DetectionData:
    """The split's images with their labelled objects (labels 1..8 in :data:`CLASSES` order): a folder's, or those
    of ``training/`` that ``ImageSets/<split>.txt`` lists."""
    if not has_split(root, split):
        raise UserError(
            f"--data {root} (KITTI) has no split {split!r}: expected {split}/image_2/ and {split}/label_2/, or "
            f"ImageSets/{split}.txt beside training/"
        )
    listing = _listed(root, split)
    folder = root / ("training" if listing is not None else split)
    if listing is None:
        images = sorted(p for p in (folder / "image_2").iterdir() if p.is_file() and is_image_file(p))
    else:
        found = {p.stem: p for p in (folder / "image_2").iterdir() if p.is_file() and is_image_file(p)}
        ids = [line.strip() for line in read_text(listing, kind="split list").splitlines() if line.strip()]
        images = [found.get(i, folder / "image_2" / f"{i}.png") for i in ids]
    if not images:
        raise UserError(f"{listing or folder / 'image_2'} holds no images")
    label_of = {name: index + 1 for index, name in enumerate(CLASSES)}
    fixes, samples, ignored = FixCounts(), [], 0
    for image in images:
        if listing is not None and not image.is_file():  # listed, not there: left out, counted as unreadable
            fixes.unreadable += 1
            continue
        label_file = folder / "label_2" / f"{image.stem}.txt"
        if not label_file.is_file():
            raise UserError(f"label file {label_file} of image {image} does not exist")
        size = readable_size(image, fixes)
        if size is None:
            continue
        boxes, labels, regions = [], [], []
        types, written, levels = [], [], []  # every line, as the devkit scores them
        for number, line in enumerate(read_text(label_file, kind="label file").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (15, 16):
                raise UserError(
                    f"label file {label_file}, line {number}: expected 15 fields (type truncated occluded alpha "
                    f"left top right bottom h w l x y z rotation_y), got {len(fields)}"
                )
            if fields[0] != DONT_CARE and fields[0] not in label_of:
                raise UserError(
                    f"label file {label_file}, line {number}: type {fields[0]!r} is none of KITTI's "
                    f"{', '.join(CLASSES)} or {DONT_CARE}"
                )
            try:
                box = [float(v) for v in fields[4:8]]
            except ValueError:
                raise UserError(
                    f"label file {label_file}, line {number}: the box {fields[4:8]} is not 4 numbers"
                ) from None
            try:
                levels.append((float(fields[1]), int(float(fields[2]))))
            except ValueError:
                raise UserError(
                    f"label file {label_file}, line {number}: truncated {fields[1]!r} and occluded {fields[2]!r} "
                    "are not two numbers"
                ) from None
            types.append(fields[0])
            written.append(box)
            if fields[0] == DONT_CARE:
                regions.append(box)
                continue
            boxes.append(box)
            labels.append(label_of[fields[0]])
        region_array = np.array(regions, np.float32).reshape(-1, 4)
        regions = region_array[clean_boxes(region_array, *size, FixCounts())].tolist()  # not counted as objects
        ignored += len(regions)
        crowd = [False] * len(boxes) + [True] * (len(regions) * len(CLASSES))
        boxes += [box for box in regions for _ in CLASSES]
        labels += [label for _ in regions for label in range(1, len(CLASSES) + 1)]
        truth = KittiTruth(
            tuple(types),
            np.array(written, np.float64).reshape(-1, 4),
            np.array([t for t, _ in levels], np.float64),
            np.array([o for _, o in levels], np.int64),
        )
        samples.append(replace(pixel_sample(image.stem, image, size, boxes, labels, fixes, crowd=crowd), kitti=truth))
    if not samples:
        raise UserError(f"{listing or folder / 'image_2'}: none of its {len(images)} images could be read")
    if ignored:
        print(
            f"note: {root} ({split}): {ignored} DontCare region(s) are not trained on, and detections inside them "
            "are ignored in evaluation"
        )
    return DetectionData(samples, list(CLASSES), list(range(1, len(CLASSES) + 1)), f"{root} ({split})", fixes)


def result_text(results: Sequence[dict[str, Any]]) -> str:
    """One image's detections (COCO results: ``category_name``, ``bbox`` x y w h, ``score``) as the lines of a
    KITTI result file, the devkit's input and the benchmark's submission format: ``type truncated occluded alpha
    left top right bottom h w l x y z rotation_y score``, with the fields a 2D detector has no value for as the
    devkit's placeholders (-1, -10, -1000; an alpha of -10 tells it there is no orientation to score)."""
    lines = []
    for r in results:
        x, y, w, h = r["bbox"]
        lines.append(
            f"{r['category_name']} -1 -1 -10 {x:.2f} {y:.2f} {x + w:.2f} {y + h:.2f} -1 -1 -1 -1000 -1000 -1000 -10 "
            f"{r['score']:.6f}"
        )
    return "".join(f"{line}\n" for line in lines)


def read_results(folder: Path, images: Collection[str]) -> tuple[list[dict[str, Any]], int]:
    """A folder of KITTI result files (``<image>.txt``, the devkit's input: 16 fields a line, the last the score),
    as COCO results with ``category_name``: what another tool wrote for the devkit, scored here like
    predictions.json. Only the files of ``images`` (the split scored) are read; also how many others were left."""
    files = sorted(p for p in folder.glob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"predictions folder {folder} holds no KITTI result files (<image>.txt)")
    results = []
    for path in (p for p in files if p.stem in images):
        for number, line in enumerate(read_text(path, kind="result file").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 16:
                    raise ValueError
                x1, y1, x2, y2, score = (float(v) for v in (*fields[4:8], fields[15]))
            except ValueError:
                raise UserError(
                    f"result file {path}, line {number}: expected 16 fields (type truncated occluded alpha left top "
                    f"right bottom h w l x y z rotation_y score), got {line.strip()!r}"
                ) from None
            box = [x1, y1, x2 - x1, y2 - y1]
            results.append({"image_id": path.stem, "category_name": fields[0], "bbox": box, "score": score})
    return results, sum(p.stem not in images for p in files)
