"""Global pooling, dropout and a linear layer over one feature level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.base import BackboneError, FeatureInfo, describe_levels

Pool = Literal["avg", "max", "avgmax"]


class ClassificationHead(nn.Module):
    """Image-level logits from the deepest (or a chosen) feature level.

    Args:
        feature_info: the backbone's ``feature_info``; the head reads only the level it uses.
        num_classes: number of logits.
        pool: ``"avg"``, ``"max"`` or ``"avgmax"`` (both, concatenated: twice the channels).
        dropout: dropout probability before the linear layer.
        level: which level to classify from; default, the one with the largest stride.

    The linear layer is called ``fc`` so that torchvision's and timm's ResNet classifiers
    load into ``head.fc`` unchanged.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        *,
        pool: Pool = "avg",
        dropout: float = 0.0,
        level: str | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} is invalid: it must be at least 1")
        if pool not in ("avg", "max", "avgmax"):
            raise ValueError(f"pool={pool!r} is invalid: choose 'avg', 'max' or 'avgmax'")
        by_name = {info.name: info for info in feature_info}
        if level is None:
            info = max(feature_info, key=lambda i: (i.stride, i.name))
        elif level in by_name:
            info = by_name[level]
        else:
            raise BackboneError(f"level={level!r} is not among the backbone's levels: {describe_levels(feature_info)}")
        self.level = info.name
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(info.channels * (2 if pool == "avgmax" else 1), num_classes)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features[self.level]  # (N, C, H, W)
        if self.pool == "avg":
            pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, C)
        elif self.pool == "max":
            pooled = F.adaptive_max_pool2d(x, 1).flatten(1)
        else:
            pooled = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], dim=1).flatten(1)
        return self.fc(self.dropout(pooled))  # (N, num_classes)
