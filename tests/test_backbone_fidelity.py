"""Our backbones against torchvision's and timm's architectures, with the same weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from conftest import randomize_bn_stats

from backbones import build_backbone

TORCHVISION_ARCHS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


def _torchvision_stages(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    x = model.relu(model.bn1(model.conv1(x)))
    out["c1"] = x
    x = model.maxpool(x)
    for level, layer in zip(("c2", "c3", "c4", "c5"), (model.layer1, model.layer2, model.layer3, model.layer4)):
        x = layer(x)
        out[level] = x
    return out


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_matches_torchvision_with_its_state_dict(arch: str, tmp_path) -> None:
    reference = torchvision.models.get_model(arch, weights=None).eval()
    randomize_bn_stats(reference)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)

    ours = build_backbone(arch, weights=path).eval()
    expected_params = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == expected_params

    x = torch.randn(1, 3, 61, 77)  # odd sizes exercise every padding and ceil rule
    with torch.no_grad():
        got, want = ours(x), _torchvision_stages(reference, x)
    assert list(got) == ["c1", "c2", "c3", "c4", "c5"]
    for level in want:
        torch.testing.assert_close(got[level], want[level], rtol=0, atol=1e-5)


def test_resnet50_parameter_count_is_torchvisions_without_fc() -> None:
    assert sum(p.numel() for p in build_backbone("resnet50").parameters()) == 23_508_032


def test_resnet50_feature_shapes_at_224() -> None:
    with torch.no_grad():
        out = build_backbone("resnet50").eval()(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "c1": (64, 112, 112),
        "c2": (256, 56, 56),
        "c3": (512, 28, 28),
        "c4": (1024, 14, 14),
        "c5": (2048, 7, 7),
    }


@pytest.mark.parametrize("output_stride,dilation", [(16, [False, False, True]), (8, [False, True, True])])
def test_dilation_matches_torchvision_replace_stride(output_stride: int, dilation: list[bool], tmp_path) -> None:
    reference = torchvision.models.resnet50(replace_stride_with_dilation=dilation).eval()
    randomize_bn_stats(reference)
    torch.save(reference.state_dict(), tmp_path / "r50.pth")
    ours = build_backbone("resnet50", weights=tmp_path / "r50.pth", output_stride=output_stride).eval()
    x = torch.randn(1, 3, 65, 49)
    with torch.no_grad():
        got, want = ours(x), _torchvision_stages(reference, x)
    for level in want:
        torch.testing.assert_close(got[level], want[level], rtol=0, atol=1e-5)


@pytest.mark.parametrize("output_stride", [32, 8])
def test_resnet50d_matches_timm(output_stride: int, tmp_path) -> None:
    reference = timm.create_model("resnet50d", features_only=True, output_stride=output_stride).eval()
    randomize_bn_stats(reference)
    full = timm.create_model("resnet50d", output_stride=output_stride)
    full.load_state_dict(reference.state_dict(), strict=False)
    torch.save(full.state_dict(), tmp_path / "r50d.pth")  # timm's own layout, fc included
    ours = build_backbone("resnet50d", weights=tmp_path / "r50d.pth", output_stride=output_stride).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(2, 3, 57, 71)
    with torch.no_grad():
        got, want = ours(x), reference(x)
    for level, expected in zip(("c1", "c2", "c3", "c4", "c5"), want):
        torch.testing.assert_close(got[level], expected, rtol=0, atol=1e-5)
