"""ResNet, ResNeXt, Wide ResNet and ResNet-D from one implementation of two blocks.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``downsample``)
and, for the ResNet-D deep stem, timm (``conv1.0``..``conv1.6``), so their checkpoints
load without conversion.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import Tensor, nn

from backbones.base import LEVELS, Backbone, BackboneError, FeatureInfo, check_out_levels
from backbones.norm import NORMS, NormFactory, norm_factory, zero_norm_weight
from backbones.registry import register_backbone
from backbones.weights import load_backbone_weights

Style = Literal["pytorch", "caffe"]


def _conv3x3(inp: int, out: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 3, stride=stride, padding=dilation, groups=groups, dilation=dilation, bias=False)


def _conv1x1(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 1, stride=stride, bias=False)


def _drop_path(rate: float) -> nn.Module:
    """timm's stochastic depth at ``rate``, or nothing at 0. timm is imported here, not with the module:
    ``import timm`` loads its whole model zoo (0.4 s of a task runner's 4 s start-up), which a plain ResNet
    never uses."""
    if rate <= 0:
        return nn.Identity()
    from timm.layers import DropPath

    return DropPath(rate)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity shortcut (ResNet-18/34).

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first convolution.
        downsample: projection for the shortcut when the shape changes.
        first_dilation: dilation of the first convolution (the previous stage's, when a
            stage is dilated instead of strided).
        dilation: dilation of the second convolution.
        norm_layer: ``channels -> module`` constructor.
        drop_path: stochastic-depth probability of the residual branch.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        first_dilation: int = 1,
        dilation: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
        style: Style = "pytorch",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation=first_dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        # The shortcut after the branch, added in place: no extra live tensor, no fresh allocation
        # (at detection sizes a fresh ~100 MB buffer per block costs page faults).
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (grouped for ResNeXt), 1×1 expand, with a projection shortcut.

    ``style="pytorch"`` strides the 3×3 convolution (torchvision, "ResNet v1.5");
    ``style="caffe"`` strides the first 1×1, as the original paper and the Caffe,
    Keras and detectron2 MSRA checkpoints do. Other arguments as in BasicBlock;
    ``groups`` and ``base_width`` set the ResNeXt/Wide width ``planes * base_width / 64 * groups``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        first_dilation: int = 1,
        dilation: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
        style: Style = "pytorch",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = _conv1x1(inplanes, width, stride_1x1)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride_3x3, groups, first_dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.drop_path(self.bn3(self.conv3(out)))
        out += x if self.downsample is None else self.downsample(x)  # in place, as BasicBlock
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]

_DILATED_STAGES = {32: (False, False), 16: (False, True), 8: (True, True)}


class ResNet(Backbone):
    """The ResNet family as a multi-scale backbone returning c1..c5.

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        groups: ResNeXt cardinality.
        width_per_group: ResNeXt/Wide bottleneck width per group (64 is plain ResNet).
        deep_stem: ResNet-D stem, three 3×3 convolutions of ``stem_width``, ``stem_width``
            and 64 channels instead of one 7×7.
        stem_width: channels of the deep stem's first two convolutions.
        avg_down: ResNet-D shortcut, average pooling then a stride-1 1×1 projection, so
            no activations are skipped by a strided 1×1.
        in_channels: input channels (1 for grayscale, 4 for RGB-D, ...).
        out_levels: which of c1..c5 ``forward`` returns. Stages past the deepest one asked
            for are not run.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and stages 1..k. Frozen
            parameters get ``requires_grad=False`` and their norm layers stay in eval mode.
        norm: ``"bn"``, ``"frozen_bn"``, ``"sync_bn"`` or ``"gn"``.
        norm_eval: keep every BatchNorm's running statistics fixed in training mode, for
            fine-tuning with small batches.
        output_stride: 32, 16 or 8. Below 32 the last one or two stages are dilated
            instead of strided, and ``feature_info`` reports the smaller strides.
        zero_init_residual: zero the last norm of each residual branch, so every block
            starts as the identity (Goyal et al. 2017).
        drop_path_rate: stochastic depth, rising linearly to this rate at the last block.
        style: where a Bottleneck puts its stride, ``"pytorch"`` (3×3) or ``"caffe"`` (1×1).
    """

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        *,
        groups: int = 1,
        width_per_group: int = 64,
        deep_stem: bool = False,
        stem_width: int = 32,
        avg_down: bool = False,
        in_channels: int = 3,
        out_levels: tuple[str, ...] | list[str] | str = LEVELS,
        frozen_stages: int = -1,
        norm: str = "bn",
        norm_eval: bool = False,
        output_stride: int = 32,
        zero_init_residual: bool = False,
        drop_path_rate: float = 0.0,
        style: Style = "pytorch",
    ) -> None:
        super().__init__()
        if output_stride not in _DILATED_STAGES:
            raise BackboneError(f"output_stride={output_stride!r} is invalid: choose 32, 16 or 8")
        if not -1 <= frozen_stages <= 4:
            raise BackboneError(f"frozen_stages={frozen_stages!r} is invalid: choose -1 (none) to 4 (all)")
        if norm not in NORMS:
            raise BackboneError(f"norm={norm!r} is invalid: choose one of {list(NORMS)}")
        if style not in ("pytorch", "caffe"):
            raise BackboneError(f"style={style!r} is invalid: choose 'pytorch' or 'caffe'")
        if in_channels < 1:
            raise BackboneError(f"in_channels={in_channels!r} is invalid: it must be at least 1")
        if not 0.0 <= drop_path_rate < 1.0:
            raise BackboneError(f"drop_path_rate={drop_path_rate!r} is invalid: it must be in [0, 1)")
        norm_layer = norm_factory(norm)
        self.norm_eval = norm_eval
        self._out = check_out_levels(out_levels, LEVELS)
        self._last_stage = LEVELS.index(self._out[-1])

        self.inplanes = 64
        if deep_stem:
            self.conv1: nn.Module = nn.Sequential(
                _conv3x3(in_channels, stem_width, 2),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, stem_width),
                norm_layer(stem_width),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, self.inplanes),
            )
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        total_blocks = sum(layers)
        drop_rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        dilate = (False, *_DILATED_STAGES[output_stride])
        infos = [FeatureInfo("c1", self.inplanes, 2)]
        stride, dilation, first_block = 4, 1, 0
        stages = []
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage_stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if index > 0 and dilate[index - 1]:
                dilation *= stage_stride
                stage_stride = 1
            stride *= stage_stride
            stage = self._make_stage(
                block,
                planes,
                blocks,
                stride=stage_stride,
                first_dilation=previous_dilation,
                dilation=dilation,
                groups=groups,
                base_width=width_per_group,
                avg_down=avg_down,
                norm_layer=norm_layer,
                style=style,
                drop_rates=drop_rates[first_block : first_block + blocks],
            )
            first_block += blocks
            stages.append(stage)
            infos.append(FeatureInfo(LEVELS[index + 1], self.inplanes, stride))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_info = tuple(info for info in infos if info.name in self._out)
        self.first_conv = "conv1.0" if deep_stem else "conv1"

        self._init_weights(zero_init_residual)
        if frozen_stages >= 0:
            self.freeze([self.conv1, self.bn1, *stages[:frozen_stages]])

    def _make_stage(
        self,
        block: Block,
        planes: int,
        blocks: int,
        *,
        stride: int,
        first_dilation: int,
        dilation: int,
        groups: int,
        base_width: int,
        avg_down: bool,
        norm_layer: NormFactory,
        style: Style,
        drop_rates: list[float],
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            if avg_down:
                if stride == 1 and dilation == 1:
                    pool: nn.Module = nn.Identity()
                elif stride == 1:
                    from timm.layers import AvgPool2dSame  # imported where used: see _drop_path

                    pool = AvgPool2dSame(2, 1, ceil_mode=True, count_include_pad=False)
                else:
                    pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                downsample = nn.Sequential(pool, _conv1x1(self.inplanes, out_channels), norm_layer(out_channels))
            else:
                downsample = nn.Sequential(_conv1x1(self.inplanes, out_channels, stride), norm_layer(out_channels))
        common = dict(groups=groups, base_width=base_width, norm_layer=norm_layer, style=style)
        stage = [
            block(
                self.inplanes,
                planes,
                stride=stride,
                downsample=downsample,
                first_dilation=first_dilation,
                dilation=dilation,
                drop_path=drop_rates[0],
                **common,  # type: ignore[arg-type]
            )
        ]
        self.inplanes = out_channels
        for rate in drop_rates[1:]:
            stage.append(
                block(self.inplanes, planes, first_dilation=dilation, dilation=dilation, drop_path=rate, **common)  # type: ignore[arg-type]
            )
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    zero_norm_weight(module.last_norm)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))  # c1: (N, 64, H/2, W/2)
        if "c1" in self._out:
            out["c1"] = x
        x = self.maxpool(x)
        for index, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            if index > self._last_stage:
                break
            x = stage(x)  # c{index+1}: (N, C, H/stride, W/stride)
            name = LEVELS[index]
            if name in self._out:
                out[name] = x
        return out


_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet34": dict(block=BasicBlock, layers=(3, 4, 6, 3)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnet152": dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=64, width_per_group=4),
    "wide_resnet50_2": dict(block=Bottleneck, layers=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block=Bottleneck, layers=(3, 4, 23, 3), width_per_group=128),
    "resnet50d": dict(block=Bottleneck, layers=(3, 4, 6, 3), deep_stem=True, stem_width=32, avg_down=True),
}

Weights = str | os.PathLike[str] | None


def _build(arch: str, weights: Weights, options: dict[str, Any]) -> ResNet:
    model = ResNet(**_ARCHITECTURES[arch], **options)
    if weights is not None:
        load_backbone_weights(model, weights, arch=arch, first_conv=model.first_conv)
    return model


@register_backbone
def resnet18(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNet-18 (He et al. 2015). ``options`` are ResNet's keyword arguments."""
    return _build("resnet18", weights, options)


@register_backbone
def resnet34(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNet-34 (He et al. 2015)."""
    return _build("resnet34", weights, options)


@register_backbone
def resnet50(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNet-50 (He et al. 2015), stride in the 3×3 by default (torchvision's v1.5)."""
    return _build("resnet50", weights, options)


@register_backbone
def resnet101(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNet-101 (He et al. 2015)."""
    return _build("resnet101", weights, options)


@register_backbone
def resnet152(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNet-152 (He et al. 2015)."""
    return _build("resnet152", weights, options)


@register_backbone
def resnext50_32x4d(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNeXt-50 32×4d (Xie et al. 2016)."""
    return _build("resnext50_32x4d", weights, options)


@register_backbone
def resnext101_32x8d(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNeXt-101 32×8d (Xie et al. 2016)."""
    return _build("resnext101_32x8d", weights, options)


@register_backbone
def resnext101_64x4d(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNeXt-101 64×4d (Xie et al. 2016)."""
    return _build("resnext101_64x4d", weights, options)


@register_backbone
def wide_resnet50_2(*, weights: Weights = None, **options: Any) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): bottlenecks twice as wide."""
    return _build("wide_resnet50_2", weights, options)


@register_backbone
def wide_resnet101_2(*, weights: Weights = None, **options: Any) -> ResNet:
    """Wide ResNet-101-2 (Zagoruyko & Komodakis 2016)."""
    return _build("wide_resnet101_2", weights, options)


@register_backbone
def resnet50d(*, weights: Weights = None, **options: Any) -> ResNet:
    """ResNet-50-D (He et al. 2018, "Bag of Tricks"): deep stem and average-pool shortcuts."""
    return _build("resnet50d", weights, options)
