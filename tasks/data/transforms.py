"""albumentations pipelines; images arrive as (H, W, 3) uint8 arrays and leave as tensors: float, except the
classification and segmentation training pipelines', which leave uint8 for :func:`normalize_batch` to normalise a
whole batch."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Pipeline:
    """An albumentations pipeline on one image, with its own reseedable random state.

    albumentations ignores the global seeds, so the engine seeds each pipeline itself:
    from the config in the main process, and per DataLoader worker (see ``reseed``), so
    workers do not repeat each other's augmentations.
    """

    def __init__(self, steps: list[A.BasicTransform], seed: int | None = None) -> None:
        self.compose = A.Compose(steps, seed=seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.compose(image=image)["image"]

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)


def classification_train(
    image_size: int, *, scale_min: float = 0.08, hflip: float = 0.5, color_jitter: float = 0.4, seed: int | None = None
) -> Pipeline:
    """Random resized crop, horizontal flip and colour jitter; a uint8 (3, H, W) tensor out.

    The ImageNet normalisation is left to the batch (:func:`normalize_batch`, in ``collate_classification``):
    one tensor operation over 64 images costs a few microseconds an image, where albumentations' ``Normalize``
    and the float copy cost about a fifth of this pipeline's time on 32 px images (docs/results.md).
    """
    steps: list[A.BasicTransform] = [A.RandomResizedCrop(size=(image_size, image_size), scale=(scale_min, 1.0))]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.8))
    return Uint8Pipeline(steps, seed)


class Uint8Pipeline(Pipeline):
    """A pipeline whose (H, W, 3) uint8 result leaves as a (3, H, W) uint8 tensor of its own memory (a decoded
    image kept in memory is read-only, and a crop may pass it through unchanged)."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return chw_tensor(self.compose(image=image)["image"])


def chw_tensor(image: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) array as a (3, H, W) tensor of its own memory, in its dtype."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
_STD_255 = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) as float32, ImageNet-normalised as albumentations' ``Normalize`` does it (to
    float rounding); float images, already normalised, are returned as they are."""
    if images.dtype != torch.uint8:
        return images
    return (images.float() - _MEAN_255).div_(_STD_255)


def classification_eval(image_size: int, *, crop_pct: float = 0.875) -> Pipeline:
    """Resize the shorter side to ``image_size / crop_pct``, centre-crop, normalise."""
    return Pipeline(
        [
            A.SmallestMaxSize(max_size=round(image_size / crop_pct)),
            A.CenterCrop(image_size, image_size),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ]
    )


class DetectionPipeline(Pipeline):
    """A bbox-aware pipeline: boxes are ``pascal_voc`` corners in pixels, labels ride along.

    Leaves the image as float (3, H, W) in [0, 1]; the detector's own transform resizes
    and normalises it.
    """

    def __init__(self, steps: list[A.BasicTransform], seed: int | None = None) -> None:
        self.moves_boxes = bool(steps)  # without geometric steps the boxes pass through untouched
        self.compose = A.Compose(
            [*steps, A.ToFloat(max_value=255.0), ToTensorV2()],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_area=1.0)
            if steps
            else None,
            seed=seed,
        )

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None, labels: np.ndarray | None = None):  # type: ignore[override]
        boxes = np.zeros((0, 4), np.float32) if boxes is None else boxes
        labels = np.zeros(0, np.int64) if labels is None else labels
        if not self.moves_boxes:
            return self.compose(image=image)["image"], boxes.astype(np.float32), labels.astype(np.int64)
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        return out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4), np.asarray(out["labels"], np.int64)


def zoom(scale_jitter: float) -> A.Affine:
    """On half the images, a zoom about the centre by a factor in [1 - scale_jitter, 1 + scale_jitter] that keeps
    the image's size: boxes and masks move with it, and what a zoom-out brings into a mask is void (255)."""
    return A.Affine(scale=(1 - scale_jitter, 1 + scale_jitter), keep_ratio=True, fill_mask=255, p=0.5)


def detection_train(
    *, hflip: float = 0.5, scale_jitter: float = 0.25, color_jitter: float = 0.2, seed: int | None = None
) -> DetectionPipeline:
    """Horizontal flip, scale jitter (zoom about the centre, so objects change size relative to the
    image the detector resizes) and photometric jitter."""
    steps: list[A.BasicTransform] = []
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if scale_jitter > 0:
        steps.append(zoom(scale_jitter))
    if color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.5))
    return DetectionPipeline(steps, seed)


def detection_eval() -> DetectionPipeline:
    return DetectionPipeline([])


class SegmentationPipeline(Pipeline):
    """A mask-aware pipeline: the image leaves normalised (3, H, W) float, the mask (H, W) int64.

    Geometric steps move the mask with nearest-neighbour sampling; pixels they bring in from
    outside the image become void (255) in the mask.
    """

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None):  # type: ignore[override]
        if mask is None:
            return self.compose(image=image)["image"], None
        out = self.compose(image=image, mask=mask)
        return out["image"], out["mask"].long()


def segmentation_train(
    crop_size: int,
    *,
    scale: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    seed: int | None = None,
) -> SegmentationPipeline:
    """Random scale, padding with void to the crop size, random crop, flip, photometric jitter."""
    steps: list[A.BasicTransform] = []
    if scale != (1.0, 1.0):
        steps.append(A.RandomScale(scale_limit=(scale[0] - 1.0, scale[1] - 1.0), p=1.0))
    steps += [
        A.PadIfNeeded(crop_size, crop_size, position="top_left", border_mode=0, fill=0, fill_mask=255),
        A.RandomCrop(crop_size, crop_size),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.5))
    return Uint8SegmentationPipeline(steps, seed)


class Uint8SegmentationPipeline(SegmentationPipeline):
    """A segmentation pipeline whose image leaves as a (3, H, W) uint8 tensor of its own memory, for
    ``collate_segmentation`` to normalise the batch at once: albumentations' ``Normalize`` was the largest step
    of the training pipeline on 128 px crops, 128 µs an image of about 330 (docs/results.md)."""

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None):  # type: ignore[override]
        out = self.compose(image=image) if mask is None else self.compose(image=image, mask=mask)
        return chw_tensor(out["image"]), None if mask is None else torch.from_numpy(out["mask"].astype(np.int64))


def segmentation_eval() -> SegmentationPipeline:
    """Normalisation only: evaluation and prediction run at each image's own size."""
    return SegmentationPipeline([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])
