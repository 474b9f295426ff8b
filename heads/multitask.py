"""One backbone, several task heads, one backbone pass per batch.

The model takes a batch that is already resized, normalised and padded to one tensor, so the
backbone runs once and every head reads the same feature dict. Detection gets that tensor as
torchvision's ``ImageList`` with each image's unpadded size; classification reads the deepest
level; segmentation returns logits at the padded input size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.image_list import ImageList

from backbones.base import Backbone
from heads.classification import ClassificationHead
from heads.detection import FasterRCNNHead
from heads.segmentation import SegmentationLoss, UNetHead

TASKS = ("classify", "detect", "segment")
Weighting = Literal["fixed", "uncertainty"]


class MultiTaskModel(nn.Module):
    """A shared backbone (``backbone``) and any subset of the three heads (``heads``, a ModuleDict).

    In evaluation ``forward(images, image_sizes)`` returns ``{"classify": logits (N, C),
    "detect": [dict(boxes, labels, scores)] per image, "segment": logits (N, K, H, W)}`` for
    the heads present, boxes in the coordinates of ``images``.

    In training ``forward(images, image_sizes, targets)`` returns each task's loss and their
    weighted total under ``"loss"``. ``targets`` holds, per task, the labels of the images that
    have them and their positions in the batch:
    ``{"classify": (indices, labels (M,)), "detect": (indices, [dict(boxes, labels)]),
    "segment": (indices, masks (M, H, W))}``. A task with no labelled image in the batch adds
    nothing, and its loss is absent from the dict.

    Args:
        backbone: the shared feature extractor.
        heads: task name (``classify``, ``detect``, ``segment``) to head module.
        loss_weights: fixed weight of each task's loss (default 1 each).
        weighting: ``"fixed"``, or ``"uncertainty"``: Kendall et al. (2018), a learned
            log-variance ``s_t`` per task and total ``sum_t exp(-s_t) * w_t * L_t + s_t / 2``.
        segmentation_loss: the segmentation head's loss (default: cross-entropy, void 255).
        label_smoothing: for the classification cross-entropy.
    """

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, nn.Module],
        *,
        loss_weights: Mapping[str, float] | None = None,
        weighting: Weighting = "fixed",
        segmentation_loss: SegmentationLoss | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        unknown = sorted(set(heads) - set(TASKS))
        if unknown or not heads:
            raise ValueError(f"heads {unknown or '{}'} are invalid: choose a non-empty subset of {list(TASKS)}")
        expected = {"classify": ClassificationHead, "detect": FasterRCNNHead, "segment": UNetHead}
        for name, head in heads.items():
            if not isinstance(head, expected[name]):
                raise ValueError(f"head {name!r} must be a {expected[name].__name__}, got {type(head).__name__}")
        if weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"weighting={weighting!r} is invalid: choose 'fixed' or 'uncertainty'")
        self.backbone = backbone
        self.heads = nn.ModuleDict({name: heads[name] for name in TASKS if name in heads})  # a fixed order
        weights = dict(loss_weights or {})
        if set(weights) - set(self.heads):
            raise ValueError(f"loss_weights names tasks {sorted(set(weights) - set(self.heads))} without a head")
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in self.heads}
        self.weighting = weighting
        self.log_variances = (
            nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in self.heads})
            if weighting == "uncertainty"
            else None
        )
        self.segmentation_loss = segmentation_loss or SegmentationLoss()
        self.label_smoothing = label_smoothing

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        targets: Mapping[str, tuple[Tensor, Any]] | None = None,
    ) -> dict[str, Any]:
        size = (images.shape[-2], images.shape[-1])
        sizes = [(int(h), int(w)) for h, w in image_sizes] if image_sizes is not None else [size] * len(images)
        features = self.backbone(images)  # the one backbone pass: c1..c5
        if not self.training:
            return self._predict(features, images, sizes, size)
        if targets is None:
            raise ValueError("MultiTaskModel needs targets in training mode")
        losses: dict[str, Tensor] = {}
        for name, (indices, labels) in targets.items():
            if len(indices) == 0:
                continue
            if name not in self.heads:
                raise ValueError(f"targets label task {name!r}, which has no head")
            losses.update(self._task_losses(name, features, images, sizes, size, indices, labels))
        losses["loss"] = self._total({name: losses[name] for name in self.heads if name in losses}, images)
        return losses

    def _predict(
        self, features: dict[str, Tensor], images: Tensor, sizes: list[tuple[int, int]], size: tuple[int, int]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, head in self.heads.items():
            if name == "classify":
                out[name] = head(features)  # (N, C)
            elif name == "detect":
                out[name] = head(features, ImageList(images, sizes))[0]
            else:
                out[name] = head(features, size)  # (N, K, H, W)
        return out

    def _task_losses(
        self,
        name: str,
        features: dict[str, Tensor],
        images: Tensor,
        sizes: list[tuple[int, int]],
        size: tuple[int, int],
        indices: Tensor,
        labels: Any,
    ) -> dict[str, Tensor]:
        """The task's loss over the labelled images only: the features of the others are not read."""
        head = self.heads[name]
        index = torch.as_tensor(indices, device=images.device)
        subset = {level: value.index_select(0, index) for level, value in features.items()}
        if name == "classify":
            logits = head(subset).float()
            return {name: F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
        if name == "detect":
            batch = ImageList(images.index_select(0, index), [sizes[i] for i in index.tolist()])
            parts = head(subset, batch, list(labels))[1]
            return {name: sum(parts.values()), **{f"detect.{k}": v for k, v in parts.items()}}  # type: ignore[dict-item]
        parts = self.segmentation_loss(head(subset, size), labels)
        return {name: parts["loss"], **{f"segment.{k}": v for k, v in parts.items() if k != "loss"}}

    def _total(self, task_losses: dict[str, Tensor], images: Tensor) -> Tensor:
        if not task_losses:  # no labels of any task in this batch: a zero that still has a graph
            return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)  # type: ignore[return-value]
        total = images.new_zeros(())
        for name, loss in task_losses.items():
            weighted = self.loss_weights[name] * loss
            if self.log_variances is not None:
                s = self.log_variances[name]
                weighted = torch.exp(-s) * weighted + 0.5 * s
            total = total + weighted
        return total

    def task_weights(self) -> dict[str, float]:
        """The effective weight of each task's loss now: fixed, or ``w_t * exp(-s_t)`` when learned."""
        if self.log_variances is None:
            return dict(self.loss_weights)
        return {name: self.loss_weights[name] * math.exp(-float(s.detach())) for name, s in self.log_variances.items()}
