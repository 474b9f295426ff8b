"""The inference form: BatchNorm folded and channels-last, with the same outputs and feature_info."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn_stats

from backbones import Backbone, FeatureInfo, InferenceBackbone, build_backbone, fast_inference
from backbones.inference import optimize_for_inference


@pytest.mark.parametrize(
    "name,options,freeze",
    [
        ("resnet50", {}, True),
        ("resnet18", {"output_stride": 8}, True),
        ("resnet50d", {}, True),
        ("resnet18", {}, False),
    ],
)
def test_folded_backbone_matches_the_original(name: str, options: dict, freeze: bool) -> None:
    backbone = build_backbone(name, **options).eval()
    randomize_bn_stats(backbone)
    fast = optimize_for_inference(backbone, freeze=freeze)
    assert fast.feature_info == backbone.feature_info
    assert fast.frozen == freeze and isinstance(fast.graph, torch.jit.ScriptModule) == freeze
    if freeze:  # a frozen TorchScript graph: constants folded in, no BatchNorm left to run
        text = str(fast.graph.graph)
        assert "aten::conv" in text or "mkldnn" in text
        assert "batch_norm" not in text and "prim::GetAttr" not in text
    else:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    for size in ((67, 59), (128, 96)):  # the frozen graph was traced at 64x64: other sizes must work
        x = torch.randn(2, 3, *size)
        with torch.inference_mode():
            want, got = backbone(x), fast(x)
        _close(got, want)


def _close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for level in want:  # folding rounds differently; bound the error by the map's own magnitude
        scale = float(want[level].abs().max())
        assert float((got[level] - want[level]).abs().max()) <= 1e-5 * scale, level


@pytest.mark.slow
def test_the_inductor_form_with_frozen_weights_matches_the_original() -> None:
    """``compile=True``: torch.compile with weight freezing in place of TorchScript, the same outputs to float
    rounding, at a second input size as well (a compile per shape), with and without grad mode around it."""
    backbone = build_backbone("resnet18").eval()
    randomize_bn_stats(backbone)
    fast = optimize_for_inference(backbone, compile=True)
    assert fast.compiled and not fast.frozen and fast.feature_info == backbone.feature_info
    for size in ((64, 64), (48, 80)):
        x = torch.randn(2, 3, *size)
        with torch.inference_mode():
            want = backbone(x)
        got = fast(x)  # grad mode on: the frozen weights are constants, so the forward runs without autograd
        assert not any(value.requires_grad for value in got.values())
        _close(got, want)


def test_original_is_untouched_and_training_is_refused() -> None:
    backbone = build_backbone("resnet18").train()
    fast = optimize_for_inference(backbone)
    assert backbone.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


class _DataDependent(Backbone):
    """A backbone torch.fx cannot trace: its control flow depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=32)
        self.feature_info = (FeatureInfo("c5", 4, 32),)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.conv(x)
        return {"c5": out if out.sum() > 0 else -out}


def test_fast_inference_falls_back_to_eager_for_untraceable_backbones() -> None:
    assert isinstance(fast_inference(build_backbone("resnet18")), InferenceBackbone)
    odd = _DataDependent().train()
    assert fast_inference(odd) is odd and not odd.training


def test_a_graph_torchscript_cannot_freeze_is_a_warning_not_a_silent_fallback(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("tracing refused for the test")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    backbone = build_backbone("resnet18").eval()
    with pytest.warns(UserWarning, match="TorchScript could not freeze the graph .tracing refused for the test"):
        fast = optimize_for_inference(backbone)
    assert not fast.frozen and not isinstance(fast.graph, torch.jit.ScriptModule)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        _close(fast(x), backbone(x))  # still the same outputs, folded and eager
