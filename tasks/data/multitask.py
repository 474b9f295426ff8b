"""Images with labels for some of three tasks, joined from one dataset per task by image path.

``--data`` is a dataset root that carries several kinds of annotation (image labels as a
``<split>.csv`` or ImageFolder, boxes as COCO or VOC, masks as VOC segmentation or
``masks/<split>/``), or a dataset YAML naming one root per task::

    classify: {root: data/labels, format: csv, classes: [cat, dog]}
    detect: data/coco
    segment: {root: data/masks}

An image that appears in several tasks' data (the same file) carries all their labels;
one that appears in one carries that one, and the other tasks' losses skip it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from heads.multitask import TASKS
from tasks.config import load_yaml
from tasks.data.detection import DetectionData, DetectionSample
from tasks.data.detection_splits import load_detection_splits
from tasks.data.folders import load_split
from tasks.data.images import READ_ERRORS, DecodedCache, warn_unreadable
from tasks.data.segmentation import (
    IGNORE_INDEX,
    SegmentationData,
    checked_mask,
    load_segmentation,
    normalized_padded,
    padded_shape,
    stack_padded,
)
from tasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, chw_tensor, zoom
from tasks.data.yolo import is_yolo_spec
from tasks.errors import UserError

TASK_NAMES = ("classify", "detect", "segment")


@dataclass
class TaskSource:
    root: Path
    format: str = "auto"
    classes: list[str] | None = None  # the task's class list; default: found in its training split
    train_split: str | None = None  # this task's own split names (VOC2007 trainval/test beside VOC2012 train/val)
    val_split: str | None = None


@dataclass
class MultiTaskSample:
    path: Path
    label: int | None = None  # classify
    detection: DetectionSample | None = None  # detect
    mask: Path | None = None  # segment
    mask_values: tuple[int, ...] | None = None  # the mask file's ids to classes (SegmentationSample.values)


@dataclass
class MultiTaskData:
    samples: list[MultiTaskSample]
    tasks: tuple[str, ...]
    class_names: dict[str, list[str]]  # per task; detection's without the background
    detection: DetectionData | None = None  # the split's boxes, for COCO/VOC scoring
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # labelled images per task


DATASET_TASKS = TASKS  # the keys of a multi-task dataset YAML: the heads' tasks


def parse_sources(data: Path, tasks: Sequence[str]) -> dict[str, TaskSource]:
    """Where each task's labels live: the YAML's entries, or the one root for every task."""
    if data.is_file() and data.suffix in (".yaml", ".yml"):
        document = load_yaml(data)
        if is_yolo_spec(document):  # Ultralytics' data YAML: its boxes and polygons serve detect and segment
            if "classify" in tasks:
                raise UserError(
                    f"dataset file {data} is YOLO data: boxes and polygons for detect and segment, no image labels "
                    "for classify: pass --tasks detect,segment, or name each task's root in a multi-task YAML"
                )
            return {name: TaskSource(data) for name in tasks}
        unknown_tasks = sorted(str(key) for key in document if key not in DATASET_TASKS)
        if unknown_tasks:  # a misspelt task would leave its labels out without a word
            raise UserError(
                f"dataset file {data}: unknown key(s) {', '.join(unknown_tasks)} (valid: {', '.join(DATASET_TASKS)})"
            )
        sources = {}
        for name in tasks:
            entry = document.get(name)
            if entry is None:
                continue
            if isinstance(entry, str):
                entry = {"root": entry}
            if not isinstance(entry, dict) or "root" not in entry:
                raise UserError(f"dataset file {data}: '{name}' needs a root folder, e.g. {name}: {{root: DIR}}")
            root = Path(entry["root"])
            classes = entry.get("classes")
            if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                raise UserError(f"dataset file {data}: '{name}.classes' must be a list of class names")
            splits = {key: entry.get(key) for key in ("train_split", "val_split")}
            for key, value in splits.items():
                if value is not None and not isinstance(value, str):
                    raise UserError(f"dataset file {data}: '{name}.{key}' must be a split name, got {value!r}")
            unknown = sorted(set(entry) - {"root", "format", "classes", *splits})
            if unknown:
                raise UserError(
                    f"dataset file {data}: unknown key(s) {', '.join(unknown)} under '{name}' "
                    "(valid: root, format, classes, train_split, val_split)"
                )
            sources[name] = TaskSource(
                root if root.is_absolute() else data.parent / root,
                str(entry.get("format", "auto")),
                classes,
                **splits,
            )
        missing = [name for name in tasks if name not in sources]
        if missing:
            raise UserError(f"dataset file {data} names no data for task(s) {', '.join(missing)}")
        return sources
    if not data.is_dir():
        raise UserError(f"--data {data} is neither a folder nor a dataset YAML")
    return {name: TaskSource(data) for name in tasks}


def _given_classes(sources: dict[str, TaskSource], class_names: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """Each task's fixed classes: ``class_names``' (the training split's or a checkpoint's), else its source's."""
    given = dict(class_names or {})
    for name, src in sources.items():
        if src.classes is not None:
            given.setdefault(name, list(src.classes))
    return given


def load_multitask_splits(
    sources: dict[str, TaskSource],
    train_split: str,
    val_split: str,
    *,
    class_names: dict[str, list[str]] | None = None,
) -> tuple[MultiTaskData, MultiTaskData]:
    """The training and the validation data of a run, as :func:`load_multitask` reads each, with the detection
    files read once for both (one pass gives both splits, and a val split held out of the training images is held
    out once)."""
    detection: tuple[DetectionData | None, DetectionData | None] = (None, None)
    if "detect" in sources:
        src = sources["detect"]
        detection = load_detection_splits(
            src.root,
            fmt=src.format,
            train_split=src.train_split or train_split,
            val_split=src.val_split or val_split,
            classes=_given_classes(sources, class_names).get("detect"),
        )
    train = load_multitask(
        sources, train_split, class_names=class_names, train_split=train_split, detection=detection[0]
    )
    val = load_multitask(
        sources,
        val_split,
        class_names=class_names or train.class_names,
        train_split=train_split,
        detection=detection[1],
    )
    return train, val


def load_multitask(
    sources: dict[str, TaskSource],
    split: str,
    *,
    class_names: dict[str, list[str]] | None = None,
    train_split: str | None = None,
    detection: DetectionData | None = None,
) -> MultiTaskData:
    """The ``split`` of every task's data, joined by image path.

    ``class_names`` (from the training split or a checkpoint) fixes each task's classes. A task whose source
    names its own ``train_split``/``val_split`` reads that split instead (``split`` is the training split when
    it equals ``train_split``). ``detection``: the detection data of this split, already read
    (:func:`load_multitask_splits`).
    """
    role = "train" if split == train_split else "val"

    def split_of(src: TaskSource) -> str:
        return (src.train_split if role == "train" else src.val_split) or split

    given = _given_classes(sources, class_names)
    by_path: dict[Path, MultiTaskSample] = {}
    names: dict[str, list[str]] = {}
    counts: dict[str, int] = {}

    def sample(path: Path) -> MultiTaskSample:
        key = path.resolve()
        return by_path.setdefault(key, MultiTaskSample(key))

    if "classify" in sources:
        src = sources["classify"]
        fmt = src.format
        if fmt == "auto" and (src.root / f"{split_of(src)}.csv").is_file():
            fmt = "csv"  # a root that also holds <split>/ images of other tasks
        samples, names["classify"] = load_split(src.root, split_of(src), fmt=fmt, classes=given.get("classify"))
        for s in samples:
            sample(s.path).label = s.label
        counts["classify"] = len(samples)
    if "detect" in sources:
        src = sources["detect"]
        if detection is None and role == "train":  # as the training split, so that a held-out val is left out
            detection, _ = load_detection_splits(
                src.root,
                fmt=src.format,
                train_split=split_of(src),
                val_split=src.val_split,
                classes=given.get("detect"),
            )
        elif detection is None:
            _, detection = load_detection_splits(
                src.root,
                fmt=src.format,
                train_split=src.train_split or train_split,
                val_split=split_of(src),
                classes=given.get("detect"),
                need_train=False,
            )
        assert detection is not None
        names["detect"] = list(detection.class_names)
        for d in detection.samples:
            sample(d.path).detection = d
        counts["detect"] = len(detection.samples)
    if "segment" in sources:
        src = sources["segment"]
        fmt = src.format
        seg: SegmentationData = load_segmentation(src.root, split_of(src), classes=given.get("segment"), fmt=fmt)
        names["segment"] = list(seg.class_names)
        for s in seg.samples:
            sample(s.image).mask = s.mask
            sample(s.image).mask_values = s.values
        counts["segment"] = len(seg.samples)
    source = ", ".join(f"{name} {src.root}" for name, src in sources.items())
    return MultiTaskData(
        sorted(by_path.values(), key=lambda s: str(s.path)),
        tuple(sources),
        names,
        detection,
        f"{source} ({split})",
        counts,
    )


class MultiTaskPipeline:
    """Longest side resized to ``image_size``, then (training) scale jitter (a zoom about the centre that
    keeps the size; what it brings in from outside is void in the mask), flip and colour jitter, moving
    boxes and masks with the image. An evaluation image leaves normalised for the backbone (float); a training
    image leaves as a (3, H, W) uint8 tensor of its own memory, for ``collate_multitask`` to normalise the batch at
    once, as classification and segmentation do (:func:`tasks.data.transforms.normalize_batch`)."""

    def __init__(
        self,
        image_size: int,
        *,
        train: bool,
        hflip: float = 0.5,
        scale_jitter: float = 0.0,
        color_jitter: float = 0.2,
        seed: int | None = None,
    ) -> None:
        steps: list[A.BasicTransform] = [A.LongestMaxSize(max_size=image_size)]
        if train and scale_jitter > 0:
            steps.append(zoom(scale_jitter))  # the detector's zoom
        if train and hflip > 0:
            steps.append(A.HorizontalFlip(p=hflip))
        if train and color_jitter > 0:
            steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.5))
        self.uint8 = train
        if not train:
            steps += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
        self.compose = A.Compose(
            steps,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_area=1.0),
            seed=seed,
        )

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, mask: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
        out = self.compose(image=image, bboxes=boxes, labels=labels, mask=mask)
        if self.uint8:
            tensor, mask_tensor = chw_tensor(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))
        else:
            tensor, mask_tensor = out["image"], out["mask"].long()
        return (
            tensor,
            np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            np.asarray(out["labels"], np.int64),
            mask_tensor,
        )

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)


class MultiTaskDataset(Dataset[dict[str, Any] | None]):
    """One image with whichever labels it has; None (skipped and counted) when unreadable."""

    def __init__(self, data: MultiTaskData, transform: Callable[..., Any], *, train: bool) -> None:
        self.data = data
        self.transform = transform
        self.train = train
        self.num_seg_classes = len(data.class_names.get("segment", ()))
        self.decoded = DecodedCache()  # nothing kept until the engine gives it a budget (train.cache_mb)

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.data.samples[index]
        try:
            image = self.decoded.load(sample.path)
            mismatch = sample.detection.size_mismatch(image) if sample.detection is not None else None
            if mismatch is not None:
                raise ValueError(mismatch)
        except READ_ERRORS as error:
            warn_unreadable(sample.path, error)
            return None
        height, width = image.shape[:2]
        boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        if sample.detection is not None:
            det = sample.detection
            boxes, labels = det.training_targets() if self.train else (det.boxes, det.labels)
        mask = np.full((height, width), IGNORE_INDEX, np.uint8)
        has_mask = False
        if sample.mask is not None:
            try:
                checked = checked_mask(
                    self.decoded, sample.mask, self.num_seg_classes, shape=(height, width), values=sample.mask_values
                )
            except READ_ERRORS as error:
                warn_unreadable(sample.mask, error)
                return None
            if isinstance(checked, str):
                print(
                    f"warning: ignoring mask {sample.mask}: {checked}; its image trains without a segmentation label",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                mask, has_mask = checked, True
        tensor, boxes, labels, mask_tensor = self.transform(image, boxes, labels, mask)
        item = {
            "image": tensor,
            "index": index,
            "original_size": (height, width),
            "label": sample.label,
            "detection": {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}
            if sample.detection is not None
            else None,
            "mask": mask_tensor if has_mask else None,
        }
        if not self.train:  # evaluation scores masks at each image's own size
            item["original_mask"] = torch.from_numpy(mask.astype(np.int64)) if has_mask else None
        return item


def collate_multitask(items: list[dict[str, Any] | None], *, multiple: int = 32) -> dict[str, Any]:
    """One padded image tensor, each image's unpadded size, and per task the labelled positions. uint8 images (the
    training pipeline's) are ImageNet-normalised here (:func:`normalized_padded`)."""
    good = [item for item in items if item is not None]
    out: dict[str, Any] = {"batch_size": len(good), "skipped": len(items) - len(good)}
    if not good:
        return {**out, "images": torch.zeros(0, 3, multiple, multiple), "sizes": [], "indices": [], "targets": {}}
    sizes = [(int(i["image"].shape[-2]), int(i["image"].shape[-1])) for i in good]
    shape = padded_shape(sizes, multiple)
    images = normalized_padded([i["image"] for i in good], sizes, shape)
    targets: dict[str, tuple[torch.Tensor, Any]] = {}
    labelled = [n for n, i in enumerate(good) if i["label"] is not None]
    targets["classify"] = (
        torch.tensor(labelled, dtype=torch.long),
        torch.tensor([good[n]["label"] for n in labelled], dtype=torch.long),
    )
    boxed = [n for n, i in enumerate(good) if i["detection"] is not None]
    targets["detect"] = (torch.tensor(boxed, dtype=torch.long), [good[n]["detection"] for n in boxed])
    masked = [n for n, i in enumerate(good) if i["mask"] is not None]
    targets["segment"] = (
        torch.tensor(masked, dtype=torch.long),
        stack_padded([good[n]["mask"] for n in masked], [sizes[n] for n in masked], shape, IGNORE_INDEX)
        if masked
        else torch.zeros(0, *shape, dtype=torch.long),
    )
    return {
        **out,
        "images": images,  # (N, 3, H, W)
        "sizes": sizes,
        "original_sizes": [i["original_size"] for i in good],
        "indices": [i["index"] for i in good],
        "targets": targets,
        "original_masks": [i.get("original_mask") for i in good],
    }
