"""The inference form: BatchNorm folded and channels-last, with the same outputs and feature_info."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_bn_stats

from backbones import Backbone, FeatureInfo, InferenceBackbone, build_backbone, fast_inference
from backbones.inference import optimize_for_inference


@pytest.mark.parametrize(
    "name,options,form,fused",
    [
        ("resnet50", {}, "onednn", 49),  # the stem, then 16 blocks: two convolutions with a ReLU, one residual
        ("resnet18", {"output_stride": 8}, "onednn", 17),  # dilated; 8 blocks of one ReLU and one residual
        ("resnet50d", {}, "onednn", 51),  # the deep stem's three convolutions
        ("resnext50_32x4d", {}, "onednn", 49),  # grouped 3x3 convolutions
        ("timm:dla34", {}, "onednn", 25),  # shortcuts passed on through Identity modules and read again later
        ("resnet50", {}, "torchscript", 0),
        ("resnet18", {}, "eager", 0),
    ],
)
def test_folded_backbone_matches_the_original(name: str, options: dict, form: str, fused: int) -> None:
    backbone = build_backbone(name, **options).eval()
    randomize_bn_stats(backbone)
    fast = optimize_for_inference(backbone, freeze=form != "eager", onednn=form == "onednn")
    assert fast.feature_info == backbone.feature_info
    assert fast.frozen == (form == "torchscript") and isinstance(fast.graph, torch.jit.ScriptModule) == fast.frozen
    assert fast.onednn_fused == fused
    if form == "torchscript":  # a frozen TorchScript graph: constants folded in, no BatchNorm left to run
        text = str(fast.graph.graph)
        assert "aten::conv" in text or "mkldnn" in text
        assert "batch_norm" not in text and "prim::GetAttr" not in text
    else:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    if form == "onednn" and not name.startswith("timm:"):  # every ReLU and residual went into a convolution
        code = fast.graph.code
        assert "relu" not in code.replace("'relu'", "") and "add" not in code.replace("'add'", "")
    odd = (64, 96) if name.startswith("timm:") else (67, 59)  # DLA's own tree needs sizes divisible by 32
    for size in (odd, (128, 96)):  # traced at no particular size: other sizes must work
        x = torch.randn(2, 3, *size)
        with torch.inference_mode():
            want, got = backbone(x), fast(x)
        _close(got, want)


class _SharedShortcuts(Backbone):
    """Residual additions whose shortcut is the input itself, a map the backbone returns, or the convolution's own
    input: none may be written over by a fused convolution. One shortcut is free to be."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(7))
        self.feature_info = (FeatureInfo("c1", 3, 1), FeatureInfo("c2", 3, 1), FeatureInfo("c3", 3, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b, c, d, e, f, g = self.convs
        h = torch.relu(a(x))  # fused
        c1 = torch.relu(b(h) + x)  # the shortcut is the caller's tensor
        c2 = torch.relu(c(h) + c1)  # the shortcut is an output
        t = torch.relu(d(c2))  # fused
        own = torch.relu(e(t) + t)  # the shortcut is the convolution's own input
        u = torch.relu(f(own))  # fused
        return {"c1": c1, "c2": c2, "c3": torch.relu(g(u) + own)}  # fused: nothing reads ``own`` after this


def test_fused_convolutions_never_overwrite_the_input_an_output_or_what_they_read() -> None:
    backbone = _SharedShortcuts().eval()
    fast = optimize_for_inference(backbone, channels_last=False, onednn=True)
    assert fast.onednn_fused == 4
    x = torch.randn(1, 3, 32, 32)
    kept = x.clone()
    with torch.inference_mode():
        want, got = backbone(x), fast(x)
    assert torch.equal(x, kept)
    _close(got, want)


def test_the_fused_graph_runs_in_grad_mode_without_autograd() -> None:
    backbone = build_backbone("resnet18").eval()
    fast = optimize_for_inference(backbone, onednn=True)
    x = torch.randn(1, 3, 64, 64)
    got = fast(x)  # oneDNN's fused operators have no derivative: the forward runs without autograd
    assert not any(value.requires_grad for value in got.values())
    with torch.no_grad():
        _close(got, backbone(x))


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
        fast = optimize_for_inference(backbone, onednn=False)
    assert not fast.frozen and not isinstance(fast.graph, torch.jit.ScriptModule)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        _close(fast(x), backbone(x))  # still the same outputs, folded and eager


def test_the_fused_graph_moved_off_the_cpu_runs_its_modules_unfused() -> None:
    """oneDNN's fused operators are CPU operators: a copy moved to another device (here "meta", which needs no
    GPU) runs the same folded modules, unfused, and the CPU copy still runs fused."""
    backbone = build_backbone("resnet18").eval()
    fast = optimize_for_inference(backbone, onednn=True)
    assert "mkldnn" in fast.graph.code and "mkldnn" not in fast.off_cpu.code
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = backbone(x)
    moved = copy.deepcopy(fast).to("meta")
    got = moved(x.to("meta"))
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert all(v.device.type == "meta" for v in got.values())
    with torch.inference_mode():
        _close(fast.off_cpu(x.contiguous(memory_format=torch.channels_last)), want)


def test_the_fused_graph_runs_in_float32_under_autocast() -> None:
    """Under bfloat16 autocast (a detector's eval with --amp) the unfused convolutions would hand oneDNN's fused
    operators bfloat16 maps: the fused graph runs in float32 and gives the float32 outputs."""
    backbone = build_backbone("resnet18").eval()
    fast = optimize_for_inference(backbone, onednn=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = backbone(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x)
    assert all(value.dtype == torch.float32 for value in got.values())
    _close(got, want)
