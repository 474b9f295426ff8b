"""albumentations pipelines; images arrive as (H, W, 3) uint8 arrays and leave as float tensors."""

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
    """Random resized crop, horizontal flip and colour jitter, then ImageNet normalisation."""
    steps: list[A.BasicTransform] = [A.RandomResizedCrop(size=(image_size, image_size), scale=(scale_min, 1.0))]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.8))
    steps += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    return Pipeline(steps, seed)


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
