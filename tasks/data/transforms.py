"""albumentations pipelines; images arrive as (H, W, 3) uint8 arrays and leave as float tensors."""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _wrap(pipeline: A.Compose) -> Callable[[np.ndarray], torch.Tensor]:
    def apply(image: np.ndarray) -> torch.Tensor:
        return pipeline(image=image)["image"]

    return apply


def classification_train(
    image_size: int, *, scale_min: float = 0.08, hflip: float = 0.5, color_jitter: float = 0.4
) -> Callable[[np.ndarray], torch.Tensor]:
    """Random resized crop, horizontal flip and colour jitter, then ImageNet normalisation."""
    steps: list[A.BasicTransform] = [A.RandomResizedCrop(size=(image_size, image_size), scale=(scale_min, 1.0))]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.8))
    steps += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    return _wrap(A.Compose(steps))


def classification_eval(image_size: int, *, crop_pct: float = 0.875) -> Callable[[np.ndarray], torch.Tensor]:
    """Resize the shorter side to ``image_size / crop_pct``, centre-crop, normalise."""
    return _wrap(
        A.Compose(
            [
                A.SmallestMaxSize(max_size=round(image_size / crop_pct)),
                A.CenterCrop(image_size, image_size),
                A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
                ToTensorV2(),
            ]
        )
    )
