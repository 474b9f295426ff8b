"""Normalisation layers a backbone can be built with."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbones.base import BackboneError

NORMS: tuple[str, ...] = ("bn", "frozen_bn", "sync_bn", "gn")

NormFactory = Callable[[int], nn.Module]


def norm_factory(norm: str, *, gn_groups: int = 32) -> NormFactory:
    """Return a ``channels -> nn.Module`` constructor for ``norm``.

    ``frozen_bn`` is torchvision's FrozenBatchNorm2d: fixed affine statistics, the usual
    choice when fine-tuning detectors from pretrained weights with small batches.
    ``gn`` uses ``gn_groups`` groups (detectron2's default of 32).
    """
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "sync_bn":
        return nn.SyncBatchNorm
    if norm == "gn":
        return partial(_group_norm, gn_groups)
    raise BackboneError(f"norm={norm!r} is invalid: choose one of {list(NORMS)}")


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    if channels % groups:
        raise BackboneError(f"gn needs channels divisible by {groups} groups, got {channels}")
    return nn.GroupNorm(groups, channels)


def zero_norm_weight(norm: nn.Module) -> None:
    """Zero a norm layer's scale, for zero-init residual branches."""
    weight = getattr(norm, "weight", None)
    if isinstance(weight, nn.Parameter):
        nn.init.zeros_(weight)
    elif weight is not None:  # FrozenBatchNorm2d keeps its scale in a buffer
        weight.zero_()
