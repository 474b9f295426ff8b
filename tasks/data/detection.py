"""Detection data in one form, whatever format it was read from.

Boxes are continuous pixel corners ``[x1, y1, x2, y2]`` in the original image; labels are
contiguous 1..K (0 is the background, torchvision's convention); ``category_ids`` maps a label
back to the dataset's own id for every output.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data.images import READ_ERRORS, DecodedCache, image_size, warn_unreadable

if TYPE_CHECKING:
    from tasks.data.kitti import KittiTruth


@dataclass
class DetectionSample:
    image_id: int | str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    labels: np.ndarray  # (N,) int64, 1..K
    crowd: np.ndarray  # (N,) bool: left out of training, handled by the COCO evaluator
    difficult: np.ndarray  # (N,) bool: left out of training, ignored by the VOC evaluator
    kitti: KittiTruth | None = None  # the label file as KITTI's devkit scores it (KITTI's layout only)

    def training_targets(self) -> tuple[np.ndarray, np.ndarray]:
        keep = ~(self.crowd | self.difficult)
        return self.boxes[keep], self.labels[keep]

    def size_mismatch(self, image: np.ndarray) -> str | None:
        """Why ``image`` (as read, EXIF orientation applied) does not fit this sample's stated size, if it does
        not: its boxes were drawn on a ``width`` x ``height`` picture, so they would land in the wrong place."""
        height, width = image.shape[:2]
        if (width, height) == (self.width, self.height):
            return None
        return f"it reads as {width}x{height} but its annotations say {self.width}x{self.height}"


@dataclass
class FixCounts:
    """Problems fixed rather than refused, reported once per split."""

    clipped: int = 0
    dropped: int = 0
    derived: int = 0  # boxes derived from a segmentation (a COCO annotation without a bbox)
    sized: int = 0  # images whose size was read from the file (an entry without width and height)
    duplicates: int = 0  # repeated object lines (YOLO labels), kept once
    unlabelled: int = 0  # images without a label file (YOLO), read as showing no objects
    unreadable: int = 0  # images left out because their size could not be read (YOLO labels need it)
    voided: int = 0  # YOLO box lines read for segmentation: an object without its shape, its box void

    def report(self, source: str) -> str | None:
        said = (
            (self.derived, "derived {} box(es) from their segmentation (no bbox given)"),
            (self.sized, "read the size of {} image(s) from the file (no width/height given)"),
            (self.clipped, "clipped {} box(es) that left the image"),
            (self.dropped, "dropped {} zero-area or inverted box(es)"),
            (self.duplicates, "removed {} duplicate label line(s)"),
            (self.unlabelled, "{} image(s) have no label file and are read as showing no objects"),
            (self.unreadable, "left out {} unreadable image(s)"),
            (self.voided, "{} object(s) given as a box, not a polygon: their boxes are void (ignored)"),
        )
        parts = [text.format(count) for count, text in said if count]
        return f"warning: {source}: " + "; ".join(parts) if parts else None


@dataclass
class DetectionData:
    samples: list[DetectionSample]
    class_names: list[str]
    category_ids: list[int]  # label k (1-based) -> category_ids[k - 1]
    source: str
    fixes: FixCounts = field(default_factory=FixCounts)

    def only(self, image_ids: Collection[int | str]) -> DetectionData:
        """The split restricted to the images ``image_ids`` names, in its own order: what an evaluation scores,
        when some images could not be read. Like torchvision's reference evaluator (which scores the images the
        model was given), an unreadable image's objects are then not counted as missed."""
        if len(image_ids) >= len(self.samples):
            return self
        return replace(self, samples=[s for s in self.samples if s.image_id in image_ids])

    def coco_image_ids(self) -> dict[int | str, int]:
        """Each sample's id for COCO's evaluators: its own when it is an integer (COCO), else its
        1-based position (VOC's id strings)."""
        return {s.image_id: (s.image_id if isinstance(s.image_id, int) else n) for n, s in enumerate(self.samples, 1)}

    def coco_ground_truth(self) -> dict[str, Any]:
        """The split as a COCO ground-truth dict with the dataset's own ids, for pycocotools.

        Difficult objects become crowd regions, which COCO's evaluator likewise neither
        rewards nor penalises.
        """
        images, annotations = [], []
        coco_ids = self.coco_image_ids()
        for sample in self.samples:
            image_id = coco_ids[sample.image_id]
            images.append(
                {"id": image_id, "width": sample.width, "height": sample.height, "file_name": str(sample.path)}
            )
            for box, label, crowd, difficult in zip(sample.boxes, sample.labels, sample.crowd, sample.difficult):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.category_ids[int(label) - 1],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(bool(crowd) or bool(difficult)),
                    }
                )
        categories = [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}


def clean_boxes(boxes: np.ndarray, width: int, height: int, fixes: FixCounts) -> np.ndarray:
    """Clip boxes (x1, y1, x2, y2) to the image in place and return the mask of boxes with positive width and
    height (torchvision's ``clip_boxes_to_image`` and ``remove_small_boxes``), counting both fixes."""
    from torchvision.ops import clip_boxes_to_image, remove_small_boxes

    given = torch.from_numpy(np.ascontiguousarray(boxes, np.float64)).reshape(-1, 4)
    clipped_boxes = clip_boxes_to_image(given, (height, width))
    keep = remove_small_boxes(clipped_boxes, float(np.finfo(np.float64).tiny))  # any positive size
    valid = np.zeros(len(given), bool)
    valid[keep.numpy()] = True
    clipped = clipped_boxes.numpy().astype(boxes.dtype)
    fixes.clipped += int((np.any(clipped != boxes, axis=1) & valid).sum())
    fixes.dropped += int((~valid).sum())
    boxes[:] = clipped
    return valid


def readable_size(image: Path, fixes: FixCounts) -> tuple[int, int] | None:
    """(width, height) from the image's header; None, counted as unreadable, where it cannot be read."""
    try:
        return image_size(image)
    except READ_ERRORS:
        fixes.unreadable += 1
        return None


def pixel_sample(
    image_id: str,
    image: Path,
    size: tuple[int, int],
    boxes: list[list[float]],
    labels: list[int],
    fixes: FixCounts,
    *,
    crowd: Sequence[bool] = (),
) -> DetectionSample:
    """A sample of pixel boxes clipped to the image (:func:`clean_boxes`), with no difficult flags; ``crowd`` flags
    the boxes that are regions to ignore (none where it is empty)."""
    width, height = size
    box_array = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    valid = clean_boxes(box_array, width, height, fixes)
    flags = np.array(crowd, bool) if len(crowd) else np.zeros(len(box_array), bool)
    label_array = np.array(labels, dtype=np.int64)[valid]
    none = np.zeros(int(valid.sum()), bool)
    return DetectionSample(image_id, image, width, height, box_array[valid], label_array, flags[valid], none)


def empty_targets(count: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((count, 4), np.float32), np.zeros(count, np.int64), np.zeros(count, bool)


def class_table(names: Sequence[str]) -> dict[str, int]:
    return {name: index + 1 for index, name in enumerate(names)}


class DetectionDataset(Dataset[dict[str, Any] | None]):
    """Images with training targets; an unreadable image yields None, skipped and counted by the collate."""

    def __init__(self, data: DetectionData, transform: Callable[..., Any], *, train: bool) -> None:
        self.data = data
        self.transform = transform
        self.train = train
        self.decoded = DecodedCache()  # nothing kept until the engine gives it a budget (train.cache_mb)

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.data.samples[index]
        try:
            image = self.decoded.load(sample.path)
            mismatch = sample.size_mismatch(image)
            if mismatch is not None:
                raise ValueError(mismatch)
        except READ_ERRORS as error:
            warn_unreadable(sample.path, error)
            return None
        boxes, labels = sample.training_targets() if self.train else (sample.boxes, sample.labels)
        tensor, boxes, labels = self.transform(image, boxes, labels)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}
        return {"image": tensor, "target": target, "index": index}


def collate_detection(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Lists of images and targets (detectors take differently sized images); ``skipped`` counts unreadable ones."""
    good = [item for item in items if item is not None]
    return {
        "images": [item["image"] for item in good],
        "targets": [item["target"] for item in good],
        "indices": [item["index"] for item in good],
        "batch_size": len(good),
        "skipped": len(items) - len(good),
    }
