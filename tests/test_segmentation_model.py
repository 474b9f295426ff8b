"""The U-Net against smp.Unet: same parameters, same outputs with the same weights, both directions."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from backbones import BackboneError, FeatureInfo, build_backbone
from heads.segmentation import SEGMENTATION_LEVELS, UNet, UNetHead, from_smp_state_dict, to_smp_state_dict
from tests.conftest import randomize_bn_stats


def _ours(backbone: str, num_classes: int, **options) -> UNet:
    net = build_backbone(backbone)
    return UNet(net, UNetHead(net.feature_info, num_classes, **options))


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50"])
@pytest.mark.parametrize("attention", [None, "scse"])
def test_same_parameters_and_outputs_as_smp_unet(backbone: str, attention, tmp_path) -> None:
    reference = smp.Unet(backbone, encoder_weights=None, classes=5, decoder_attention_type=attention)
    randomize_bn_stats(reference)
    ours = _ours(backbone, 5, attention=attention)
    assert _count(ours) == _count(reference)
    torch.save(reference.state_dict(), tmp_path / "smp.pt")
    ours.load_state_dict(from_smp_state_dict(torch.load(tmp_path / "smp.pt", weights_only=True)))
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == (2, 5, 96, 128)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_checkpoint_moves_back_to_smp_and_odd_sizes_work() -> None:
    ours = _ours("resnet34", 3, decoder_channels=(128, 64, 32, 16, 8))
    randomize_bn_stats(ours, seed=1)
    reference = smp.Unet("resnet34", encoder_weights=None, classes=3, decoder_channels=(128, 64, 32, 16, 8))
    reference.load_state_dict(to_smp_state_dict(ours.state_dict()))  # strict: every key maps
    reference.eval(), ours.eval()
    x = torch.randn(1, 3, 75, 101)  # not a multiple of 32: each step upsamples to the skip's own size
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)
    assert ours(x).shape[-2:] == (75, 101)


@pytest.mark.parametrize("backbone", ["resnet18", "resnext50_32x4d", "resnet50d"])
def test_decoder_widths_come_from_feature_info(backbone: str) -> None:
    ours = _ours(backbone, 4).eval()
    info = {i.name: i.channels for i in ours.backbone.feature_info}
    first_block = ours.head.decoder.blocks[0].conv1[0]
    assert first_block.in_channels == info["c5"] + info["c4"]
    with torch.no_grad():
        assert ours(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize("backbone", ["resnet18", "timm:convnext_atto"])
def test_a_backbone_that_starts_at_stride_4_gets_a_four_step_decoder(backbone: str) -> None:
    """A ConvNeXt (timm) has no stride-2 map: the U-Net reads c2..c5 with the first four decoder widths, and its
    last step upsamples from stride 4 to the input size. A ResNet asked for c2..c5 gets the same."""
    options = {"out_levels": ("c2", "c3", "c4", "c5")} if backbone == "resnet18" else {}
    net = build_backbone(backbone, **options)
    head = UNetHead(net.feature_info, 3)
    assert head.levels == ("c2", "c3", "c4", "c5")
    widths = [block.conv2[0].out_channels for block in head.decoder.blocks]
    assert widths == [256, 128, 64, 32] and head.segmentation_head[0].in_channels == 32
    channels = {info.name: info.channels for info in net.feature_info}
    inputs = [channels["c5"], *widths]  # what each step receives from the one before, plus its skip
    skips = [block.conv1[0].in_channels - width for block, width in zip(head.decoder.blocks, inputs)]
    assert skips == [channels["c4"], channels["c3"], channels["c2"], 0]  # the last step has no skip
    model = UNet(net, head).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_dilated_backbone_keeps_the_output_at_input_size() -> None:
    net = build_backbone("resnet18", output_stride=8)
    model = UNet(net, UNetHead(net.feature_info, 2)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 2, 64, 48)


def test_head_rejects_bad_options() -> None:
    info = build_backbone("resnet18", out_levels=("c2", "c3", "c4", "c5")).feature_info
    with pytest.raises(BackboneError, match="c1"):
        UNetHead(info, 3, levels=SEGMENTATION_LEVELS)
    vit = [FeatureInfo("c4", 192, 16), FeatureInfo("c5", 192, 16), FeatureInfo("c6", 192, 16)]  # no pyramid
    with pytest.raises(BackboneError, match=r"returns c4 \(stride 16\), c5 \(stride 16\), c6 \(stride 16\)"):
        UNetHead(vit, 3)
    full = build_backbone("resnet18").feature_info
    with pytest.raises(ValueError, match="one entry per level"):
        UNetHead(full, 3, decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="attention"):
        UNetHead(full, 3, attention="cbam")  # type: ignore[arg-type]


def test_input_scale_runs_the_network_on_the_shrunk_image_and_returns_logits_at_input_size() -> None:
    full = _ours("resnet18", 3).eval()
    randomize_bn_stats(full, seed=2)
    half = UNet(full.backbone, full.head, input_scale=0.5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        # by hand: 2x2 block means (exactly half the size, so the bilinear step changes nothing), the
        # full-scale network on them, and its logits upsampled bilinearly to the input size
        expected = torch.nn.functional.interpolate(
            full(torch.nn.functional.avg_pool2d(x, 2)), size=(64, 96), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(half(x), expected)
        odd = UNet(full.backbone, full.head, input_scale=0.3).eval()
        assert odd(torch.randn(1, 3, 75, 101)).shape == (1, 3, 75, 101)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="input_scale"):
            UNet(full.backbone, full.head, input_scale=bad)
