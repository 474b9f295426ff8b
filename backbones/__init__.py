"""Multi-scale feature extractors: the ResNet family and any timm model.

>>> from backbones import build_backbone
>>> net = build_backbone("resnet50", out_levels=("c3", "c4", "c5"))
>>> [(f.name, f.channels, f.stride) for f in net.feature_info]
[('c3', 512, 8), ('c4', 1024, 16), ('c5', 2048, 32)]
"""

from __future__ import annotations

from typing import Any

from backbones import resnet as _resnet  # noqa: F401  (fills the registry)
from backbones.base import LEVELS, Backbone, BackboneError, FeatureInfo
from backbones.inference import InferenceBackbone, fast_inference, fast_model_inference, optimize_for_inference
from backbones.norm import NORMS
from backbones.registry import register_backbone, registered
from backbones.resnet import BasicBlock, Bottleneck, ResNet
from backbones.timm_backbone import PREFIX as TIMM_PREFIX
from backbones.timm_backbone import TimmBackbone
from backbones.weights import WeightsError

__all__ = [
    "LEVELS",
    "NORMS",
    "Backbone",
    "BackboneError",
    "BasicBlock",
    "Bottleneck",
    "FeatureInfo",
    "InferenceBackbone",
    "ResNet",
    "TimmBackbone",
    "WeightsError",
    "build_backbone",
    "fast_inference",
    "fast_model_inference",
    "list_backbones",
    "optimize_for_inference",
    "register_backbone",
]


def list_backbones() -> list[str]:
    """The registered backbone names; any ``timm:<model>`` name works besides these."""
    return sorted(registered())


def build_backbone(name: str, **options: Any) -> Backbone:
    """Build a registered backbone, or ``timm:<model>`` through timm's features_only API.

    ``options`` go to the builder: ``weights``, ``out_levels``, ``frozen_stages``, ``norm``,
    ``norm_eval``, ``output_stride``, ``in_channels``, ``zero_init_residual``,
    ``drop_path_rate`` and ``style`` (see :class:`backbones.resnet.ResNet`).
    """
    if name.startswith(TIMM_PREFIX):
        return TimmBackbone(name[len(TIMM_PREFIX) :], **options)
    builders = registered()
    if name not in builders:
        raise BackboneError(f"unknown backbone {name!r}: choose one of {list_backbones()} or 'timm:<model name>'")
    return builders[name](**options)
