"""Where in an image a prediction comes from: class activation maps computed by pytorch-grad-cam.

- Grad-CAM (Selvaraju et al., 2017) for a classification head: the gradient of the chosen class's logit
  weighs the channels of the feature level the head reads.
- EigenCAM (Muhammad and Yeasin, 2020) for a detector: the first principal component of the backbone's
  deepest level. It needs no gradient and no target, so the detector's RPN and RoI heads need no wrapping.

The layer is never named per architecture. The level comes from ``feature_info`` (the head's own level, or
the deepest one), and an ``nn.Identity`` placed on that level's output is what grad-cam hooks, so every
registered backbone and every ``timm:`` model works alike. The maps come back as grad-cam returns them: one
(H, W) float32 map per image at the input's size, scaled to [0, 1].
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from heads.classification import ClassificationHead
from heads.detection import FasterRCNN
from tasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tasks.errors import UserError, name_list
from tasks.export import is_exported


class TappedClassifier(nn.Module):
    """``backbone`` then ``head``, with the level the head reads passed through ``tap`` (an identity)."""

    def __init__(self, backbone: nn.Module, head: ClassificationHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tap = nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        features = dict(self.backbone(images))
        features[self.head.level] = self.tap(features[self.head.level])
        return self.head(features)  # (N, C)


class DetectorLevel(nn.Module):
    """The detector's own resize and normalisation, then its backbone's deepest level through ``tap``, cut to
    the image's unpadded part so that the map lines up with the image. One image (1, 3, H, W) in [0, 1]."""

    def __init__(self, detector: FasterRCNN) -> None:
        super().__init__()
        self.detector = detector
        deepest = max(detector.backbone.feature_info, key=lambda info: info.stride)
        self.level, self.stride = deepest.name, deepest.stride
        self.tap = nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        batch, _ = self.detector.transform(list(images))
        feature = self.detector.backbone(batch.tensors)[self.level]
        height, width = batch.image_sizes[0]
        return self.tap(feature[..., : math.ceil(height / self.stride), : math.ceil(width / self.stride)])


def grad_cam(backbone: nn.Module, head: ClassificationHead, images: Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM of each image of ``images`` (N, 3, H, W, normalised as the model expects) for its class in
    ``classes``: (N, H, W) float32 in [0, 1]. Runs with gradients on, whatever the caller's grad mode."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(classes) != len(images):
        raise ValueError(f"classes has {len(classes)} entries for {len(images)} images")
    model = TappedClassifier(backbone, head)
    cam = GradCAM(model=model, target_layers=[model.tap])
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # The input requires grad so that the tapped level does too, even with a frozen backbone.
            inputs = images.detach().clone().requires_grad_(True)
            return cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()


def eigen_cam(detector: FasterRCNN, image: Tensor) -> np.ndarray:
    """EigenCAM of one image (3, H, W) in [0, 1] on the detector's deepest backbone level: (H, W) float32 in
    [0, 1]. The sign of a principal component is arbitrary; grad-cam keeps its positive part."""
    from pytorch_grad_cam import EigenCAM

    model = DetectorLevel(detector)
    cam = EigenCAM(model=model, target_layers=[model.tap])
    try:
        with torch.no_grad():
            return cam(input_tensor=image[None], targets=[])[0]
    finally:
        cam.activations_and_grads.release()


def add_cam_options(parser: argparse.ArgumentParser, *, by_class: bool) -> None:
    """``predict``'s ``--cam`` and, for a classification head, ``--cam-class NAME``."""
    if by_class:
        parser.add_argument("--cam", action="store_true", help="predict: Grad-CAM heat maps for the top class")
        parser.add_argument("--cam-class", help="predict: Grad-CAM heat maps for this class (implies --cam)")
    else:
        parser.add_argument("--cam", action="store_true", help="predict: EigenCAM heat maps of the backbone's c5")


def wants_cam(args: argparse.Namespace, checkpoint: Path) -> bool:
    """Whether ``predict`` draws CAMs (``--cam``, or ``--cam-class``): a one-line error for an exported model,
    which has no layer to hook and, under onnxruntime, no gradients."""
    wanted = bool(getattr(args, "cam", False)) or getattr(args, "cam_class", None) is not None
    if wanted and is_exported(checkpoint):
        raise UserError(f"--cam needs a training checkpoint (.pt); {checkpoint} is an exported model")
    return wanted


def cam_class_index(args: argparse.Namespace, checkpoint: Path, class_names: Sequence[str]) -> int | None:
    """The index of the class ``--cam-class`` names, or None (each image's top class)."""
    name = getattr(args, "cam_class", None)
    if name is None:
        return None
    if name not in class_names:
        raise UserError(f"--cam-class {name!r} is not a class of {checkpoint}: {name_list(list(class_names))}")
    return list(class_names).index(name)


def input_view(image: Tensor) -> np.ndarray:
    """A normalised input (3, H, W) as the RGB picture (H, W, 3) uint8 the model saw."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().byte().permute(1, 2, 0).numpy()
