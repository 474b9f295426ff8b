"""The inference form: BatchNorm folded and channels-last, with the same outputs and feature_info."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn_stats

from backbones import build_backbone
from backbones.inference import optimize_for_inference


@pytest.mark.parametrize("name,options", [("resnet50", {}), ("resnet18", {"output_stride": 8}), ("resnet50d", {})])
def test_folded_backbone_matches_the_original(name: str, options: dict) -> None:
    backbone = build_backbone(name, **options).eval()
    randomize_bn_stats(backbone)
    fast = optimize_for_inference(backbone)
    assert fast.feature_info == backbone.feature_info
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 3, 67, 59)
    with torch.inference_mode():
        want, got = backbone(x), fast(x)
    assert list(got) == list(want)
    for level in want:  # folding rounds differently; bound the error by the map's own magnitude
        scale = float(want[level].abs().max())
        assert float((got[level] - want[level]).abs().max()) <= 1e-5 * scale, level
    assert backbone.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()
