"""Every registered backbone keeps the interface's promises, for every option."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from backbones import LEVELS, Backbone, BasicBlock, Bottleneck, build_backbone, list_backbones
from backbones.registry import register_backbone

SMALL = ["resnet18", "resnet50", "resnext50_32x4d", "resnet50d"]


def _check_feature_info(backbone: Backbone, height: int, width: int) -> None:
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, height, width))
    assert list(out) == [info.name for info in backbone.feature_info]
    for info in backbone.feature_info:
        _, channels, h, w = out[info.name].shape
        assert channels == info.channels, info
        assert abs(h - height / info.stride) < 1 and abs(w - width / info.stride) < 1, (info, h, w)


@pytest.mark.parametrize("name", list_backbones())
def test_feature_info_is_true_at_odd_sizes(name: str) -> None:
    backbone = build_backbone(name)
    assert [info.stride for info in backbone.feature_info] == [2, 4, 8, 16, 32]
    _check_feature_info(backbone, 53, 67)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_feature_info_follows_dilation(name: str, output_stride: int) -> None:
    backbone = build_backbone(name, output_stride=output_stride)
    strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    assert [info.stride for info in backbone.feature_info] == strides
    _check_feature_info(backbone, 45, 39)


@pytest.mark.parametrize(
    "name,output_stride", [("timm:resnet18", 32), ("timm:resnet18", 16), ("timm:convnext_atto", 32)]
)  # timm's convnext has no dilation
def test_timm_feature_info_is_true(name: str, output_stride: int) -> None:
    backbone = build_backbone(name, output_stride=output_stride)
    assert backbone.feature_info[-1].name == "c5"
    _check_feature_info(backbone, 64, 96)


def test_timm_token_models_give_nchw_maps_at_any_input_size() -> None:
    """Swin returns (N, H, W, C) maps from timm: they reach the heads as (N, C, H, W), the same values. A ViT
    takes an input of another size than its 224 (timm's dynamic_img_size), where it asserted before, and gives its
    pyramid there."""
    swin = build_backbone("timm:swin_tiny_patch4_window7_224").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = swin(x), swin.model(x)
    assert [tuple(m.shape[-1:]) for m in theirs] == [(info.channels,) for info in swin.feature_info]  # NHWC there
    for info, nhwc in zip(swin.feature_info, theirs):
        assert torch.equal(ours[info.name], nhwc.permute(0, 3, 1, 2))
    _check_feature_info(swin, 64, 96)
    vit = build_backbone("timm:vit_tiny_patch16_224").eval()
    _check_feature_info(vit, 64, 96)


def test_a_vit_serves_c2_to_c5_through_vitdets_simple_pyramid() -> None:
    """A plain ViT (every block at stride 16) gives c2..c5 at strides 4..32 (it gave c4, c5 and c6, all at stride
    16, which no head could read): c4 is timm's own last-block map, c5 that map max-pooled, c3 and c2 its 2x2
    transposed convolutions with half and a quarter of the channels (ViTDet's simple feature pyramid). Only the
    asked levels are built; frozen_stages 0 freezes the patch embedding, k a quarter of the blocks per stage. A
    patch size that is not a power of two has no pyramid: its last block's map alone is c5, at its own stride."""
    import torch.nn.functional as F

    vit = build_backbone("timm:vit_tiny_patch16_224").eval()
    assert [(i.name, i.channels, i.stride) for i in vit.feature_info] == [
        ("c2", 48, 4), ("c3", 96, 8), ("c4", 192, 16), ("c5", 192, 32),
    ]  # fmt: skip
    _check_feature_info(vit, 224, 160)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours, theirs = vit(x), vit.model(x)[-1]
    assert torch.equal(ours["c4"], theirs)
    assert torch.equal(ours["c5"], F.max_pool2d(theirs, 2))
    up = vit.pyramid.branches
    assert [type(m).__name__ for m in up["c2"]] == ["ConvTranspose2d", "LayerNorm2d", "GELU", "ConvTranspose2d"]
    assert [type(m).__name__ for m in up["c3"]] == ["ConvTranspose2d"]
    with torch.no_grad():
        assert torch.equal(ours["c3"], up["c3"](theirs)) and torch.equal(ours["c2"], up["c2"](theirs))

    only = build_backbone("timm:vit_tiny_patch16_224", out_levels=("c5",))
    assert list(only.pyramid.branches) == ["c5"] and not list(only.pyramid.parameters())

    def frozen(stages: int) -> set[str]:
        backbone = build_backbone("timm:vit_tiny_patch16_224", frozen_stages=stages)
        names = {name for name, p in backbone.named_parameters() if not p.requires_grad}
        return {".".join(n.split(".")[2:4]) if ".blocks." in n else n.split(".")[2] for n in names}

    # the stem (patch embedding, class token, position embedding), then a quarter of the 12 blocks per stage
    assert frozen(0) == {"patch_embed", "cls_token", "pos_embed"}
    assert frozen(1) == {"patch_embed", "cls_token", "pos_embed", "blocks.0", "blocks.1", "blocks.2"}
    assert frozen(3) == {"patch_embed", "cls_token", "pos_embed", *(f"blocks.{i}" for i in range(9))}
    # all four: every block and the final norm that every level is made after (kept since timm's getter drops it)
    assert frozen(4) == {"patch_embed", "cls_token", "pos_embed", *(f"blocks.{i}" for i in range(12)), "norm"}
    assert not any(p.requires_grad is False for p in only.parameters())
    dino = build_backbone("timm:vit_small_patch14_dinov2").eval()
    assert [(i.name, i.channels, i.stride) for i in dino.feature_info] == [("c5", 384, 14)]
    with torch.no_grad():
        assert torch.equal(dino(x[:, :, :84, :112])["c5"], dino.model(x[:, :, :84, :112])[-1])


def test_a_patch_that_does_not_divide_the_input_pads_it_and_a_fixed_size_model_says_its_size() -> None:
    """DINOv2's patch 14 does not divide 64: timm's assertion stopped training with a traceback. The input is now
    padded with zeros at the right and bottom to a multiple of the patch (timm's ``dynamic_img_pad``), so the map is
    the model's on the padded input. BEiT, which timm gives no ``dynamic_img_size``, takes 224 x 224 only: another
    size is one line naming the model and the size, not timm's assertion. The detector's levels from DINOv2 say why
    it has only c5."""
    import torch.nn.functional as F

    from backbones import BackboneError

    dino = build_backbone("timm:vit_small_patch14_dinov2").eval()
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        ours = dino(x)["c5"]
        padded = dino.model(F.pad(x, (0, 84 - 72, 0, 70 - 64)))[-1]  # 70 = 5 * 14, 84 = 6 * 14
    assert ours.shape == (1, 384, 5, 6)
    torch.testing.assert_close(ours, padded, rtol=0, atol=1e-5)
    with pytest.raises(BackboneError) as caught:  # the detector's levels: the generic "choose a subset of ['c5']"
        build_backbone("timm:vit_small_patch14_dinov2", out_levels=("c2", "c3", "c4", "c5"))
    assert str(caught.value) == (
        "timm model 'vit_small_patch14_dinov2' has one map, at stride 14 (its patch), which is not a power of two, so "
        "it has no feature pyramid: it returns c5 alone, for classification, where out_levels=['c2', 'c3', 'c4', "
        "'c5'] was asked (the FPN and the U-Net read c2..c5; a ViT of patch 16 gives them)"
    )
    beit = build_backbone("timm:beit_base_patch16_224", out_levels=("c5",)).eval()
    with pytest.raises(BackboneError) as caught:
        beit(torch.randn(1, 3, 64, 64))
    assert str(caught.value) == (
        "timm model 'beit_base_patch16_224' takes 224 x 224 inputs only (timm has no dynamic_img_size for it); this "
        "input is 64 x 64: classify at --image-size 224, or choose a model that takes any size (ViT, DeiT, EVA)"
    )


def test_a_misspelt_timm_name_gets_the_names_it_is_close_to() -> None:
    from backbones import BackboneError

    with pytest.raises(BackboneError, match=r"timm has no model 'convnex_tiny'; similar names: convnext_tiny, "):
        build_backbone("timm:convnex_tiny")
    with pytest.raises(BackboneError, match=r"timm has no model 'qqqq'; timm.list_models\(\) lists them$"):
        build_backbone("timm:qqqq")


def test_out_levels_limits_outputs_and_skips_unused_stages() -> None:
    backbone = build_backbone("resnet18", out_levels=("c3", "c2")).eval()
    assert backbone.out_levels == ("c2", "c3")
    calls = []
    backbone.layer3.register_forward_hook(lambda *_: calls.append("layer3"))
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["c2", "c3"] and calls == []
    with pytest.raises(ValueError, match="c6"):
        build_backbone("resnet18", out_levels=("c6",))
    for name in ("resnet18", "timm:resnet18"):  # one name alone is that level (it was read as 'c' and '5')
        assert [f.name for f in build_backbone(name, out_levels="c5").feature_info] == ["c5"]
    with pytest.raises(ValueError, match=r"out_levels=\['c6'\]"):
        build_backbone("resnet18", out_levels="c6")


@pytest.mark.parametrize("frozen_stages", [-1, 0, 2, 4])
def test_frozen_stages_freeze_parameters_and_norm_statistics(frozen_stages: int) -> None:
    backbone = build_backbone("resnet18", frozen_stages=frozen_stages)
    backbone.train()
    parts = [("stem", [backbone.conv1, backbone.bn1])] + [
        (f"layer{i}", [getattr(backbone, f"layer{i}")]) for i in range(1, 5)
    ]
    before = {n: b.clone() for n, b in backbone.named_buffers() if n.endswith("running_mean")}
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    after = dict(backbone.named_buffers())
    for index, (name, modules) in enumerate(parts):
        frozen = index <= frozen_stages
        for module in modules:
            assert all(p.requires_grad != frozen for p in module.parameters()), name
            assert all(m.training != frozen for m in module.modules()), name
        prefix = "bn1" if name == "stem" else name
        for key, value in before.items():
            if key.startswith(prefix + "."):
                assert torch.equal(after[key], value) == frozen, key


def test_frozen_stages_on_timm_backbone() -> None:
    backbone = build_backbone("timm:resnet18", frozen_stages=1)
    frozen = {n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}


def test_timm_backbone_norms_freeze_or_refuse() -> None:
    """frozen_bn turns a timm model's BatchNorms into timm's frozen ones after its weights load: in training mode
    it computes what the unfrozen model computes in eval mode, and its statistics stay. gn is the ResNets' only."""
    from torchvision.ops import FrozenBatchNorm2d as TimmFrozenBatchNorm2d  # timm's freezing makes these

    from backbones import BackboneError

    torch.manual_seed(0)
    plain = build_backbone("timm:resnet18")
    for module in plain.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    frozen = build_backbone("timm:resnet18", norm="frozen_bn")
    frozen.load_state_dict({k: v for k, v in plain.state_dict().items() if "num_batches_tracked" not in k})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, TimmFrozenBatchNorm2d) for m in frozen.modules()) == 20
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = plain.eval()(x)["c5"]
        got = frozen.train()(x)["c5"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(BackboneError, match="norm='gn' is invalid for a timm model"):
        build_backbone("timm:resnet18", norm="gn")


def test_norm_eval_keeps_running_statistics() -> None:
    backbone = build_backbone("resnet18", norm_eval=True).train()
    before = {n: b.clone() for n, b in backbone.named_buffers()}
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert all(torch.equal(before[n], b) for n, b in backbone.named_buffers())
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize(
    "norm,layer",
    [
        ("bn", torch.nn.BatchNorm2d),
        ("frozen_bn", FrozenBatchNorm2d),
        ("sync_bn", torch.nn.SyncBatchNorm),
        ("gn", torch.nn.GroupNorm),
    ],
)
def test_norm_choices(norm: str, layer: type) -> None:
    backbone = build_backbone("resnet50d", norm=norm).train()
    norms = [m for m in backbone.modules() if isinstance(m, layer)]
    assert len(norms) == 2 + 1 + 3 * 16 + 4  # deep stem 2, bn1, 3 per block, one per downsample
    out = backbone(torch.randn(2, 3, 64, 64))
    out["c5"].mean().backward()
    with pytest.raises(ValueError, match="norm='ln'"):
        build_backbone("resnet18", norm="ln")


def test_in_channels_grayscale_weights_are_summed(tmp_path) -> None:
    rgb = build_backbone("resnet18").eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    gray = build_backbone("resnet18", in_channels=1, weights=tmp_path / "rgb.pth").eval()
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(gray(x)["c5"], rgb(x.expand(-1, 3, -1, -1))["c5"], rtol=1e-4, atol=1e-5)


def test_in_channels_four_repeats_and_rescales(tmp_path) -> None:
    rgb = build_backbone("resnet18")
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    rgbd = build_backbone("resnet18", in_channels=4, weights=tmp_path / "rgb.pth")
    w3, w4 = rgb.conv1.weight.detach(), rgbd.conv1.weight.detach()
    expected = torch.cat([w3, w3[:, :1]], dim=1) * 3 / 4
    torch.testing.assert_close(w4, expected)


@pytest.mark.parametrize("name,block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_zero_init_residual_makes_blocks_start_as_identity(name: str, block: type) -> None:
    backbone = build_backbone(name, zero_init_residual=True)
    blocks = [m for m in backbone.modules() if isinstance(m, block)]
    assert blocks and all(float(b.last_norm.weight.detach().abs().sum()) == 0 for b in blocks)
    plain = build_backbone(name)
    assert all(float(b.last_norm.weight.detach().abs().sum()) > 0 for b in plain.modules() if isinstance(b, block))


def test_drop_path_rate_rises_linearly_and_only_acts_in_training() -> None:
    backbone = build_backbone("resnet18", drop_path_rate=0.3)
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == "DropPath"]
    assert len(rates) == 7 and math.isclose(rates[-1], 0.3) and rates == sorted(rates)
    x = torch.randn(4, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(backbone(x)["c5"], backbone(x)["c5"])
        backbone.train()
        assert not torch.equal(backbone(x)["c5"], backbone(x)["c5"])


def test_caffe_style_strides_the_first_1x1() -> None:
    caffe, pytorch = build_backbone("resnet50", style="caffe"), build_backbone("resnet50")
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert pytorch.layer2[0].conv1.stride == (1, 1) and pytorch.layer2[0].conv2.stride == (2, 2)
    _check_feature_info(caffe, 47, 51)


@pytest.mark.parametrize(
    "option", [{"output_stride": 4}, {"frozen_stages": 5}, {"style": "tf"}, {"in_channels": 0}, {"drop_path_rate": 1.0}]
)
def test_invalid_options_name_the_bad_value(option: dict) -> None:
    key, value = next(iter(option.items()))
    with pytest.raises(ValueError, match=f"{key}={value!r}"):
        build_backbone("resnet18", **option)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet50d") as error:
        build_backbone("resnet51")
    assert "resnet51" in str(error.value)


def test_registry_refuses_duplicates() -> None:
    def resnet18() -> Backbone:  # same name as the registered builder
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_backbone(resnet18)


def test_levels_constant_is_stride_order() -> None:
    assert LEVELS == ("c1", "c2", "c3", "c4", "c5")
