"""U-Net over any backbone's c1..c5, built from segmentation-models-pytorch's decoder blocks.

The decoder is smp's ``UnetDecoder`` and the final 3×3 conv is smp's ``SegmentationHead``,
both under the module names smp uses, so :func:`from_smp_state_dict` and
:func:`to_smp_state_dict` move checkpoints between ``smp.Unet`` and this model with
renaming alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.base import Backbone, BackboneError, FeatureInfo, describe_levels
from heads.state_dict import rename_prefixes

SEGMENTATION_LEVELS = ("c1", "c2", "c3", "c4", "c5")
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def default_levels(feature_info: Sequence[FeatureInfo]) -> tuple[str, ...]:
    """The levels a U-Net reads from this backbone: c1..c5, or where its first map is deeper, the levels it has
    from its first one to c5, each at a larger stride than the one before (a ViT's maps, all at stride 16, are not
    such a pyramid: they keep c1..c5, and the head's message says what is missing)."""
    strides = {info.name: info.stride for info in feature_info}
    present = [level for level in SEGMENTATION_LEVELS if level in strides]
    pyramid = all(strides[a] < strides[b] for a, b in zip(present, present[1:]))
    if len(present) >= 2 and present == list(SEGMENTATION_LEVELS[-len(present) :]) and pyramid:
        return tuple(present)
    return SEGMENTATION_LEVELS


class UNetHead(nn.Module):
    """U-Net decoder: the deepest level is upsampled step by step, joined at each step by the
    next shallower level (skip connections at strides 16, 8, 4 and 2 for a ResNet), and a last
    step without a skip brings it to the input size, where a 3×3 conv gives the class logits.

    Args:
        feature_info: the backbone's ``feature_info``; every level in ``levels`` must be there.
        num_classes: output channels (one logit per class).
        levels: the levels read, shallowest first; the last one starts the decoder. Default: c1..c5, or for a
            backbone whose first map is deeper (a timm ConvNeXt or Swin starts at c2, stride 4) the levels it has
            from there to c5, with ``decoder_channels`` cut to as many steps; the last step then upsamples from
            that first map's stride to the input size.
        decoder_channels: output channels of each decoder step, one per level.
        attention: ``"scse"`` adds spatial and channel squeeze-and-excitation to every step.
        decoder_norm: ``"batchnorm"`` (smp's default) or any ``use_norm`` value smp takes.
        interpolation: upsampling mode, smp's ``decoder_interpolation``.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        *,
        levels: Sequence[str] | None = None,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        attention: Literal["scse"] | None = None,
        decoder_norm: bool | str = "batchnorm",
        interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} is invalid: it must be at least 1")
        by_name = {info.name: info for info in feature_info}
        if levels is None:
            levels = default_levels(feature_info)
            decoder_channels = tuple(decoder_channels)[: len(levels)]
        missing = [level for level in levels if level not in by_name]
        if missing:
            raise BackboneError(
                f"the backbone returns {describe_levels(feature_info)}, but the U-Net reads {', '.join(levels)}"
            )
        if len(decoder_channels) != len(levels):
            raise ValueError(f"decoder_channels={list(decoder_channels)} needs one entry per level {list(levels)}")
        if attention not in (None, "scse"):
            raise ValueError(f"attention={attention!r} is invalid: choose None or 'scse'")
        self.levels = tuple(levels)
        # smp's decoder drops its first encoder entry (the input itself); 0 channels stand in for it.
        self.decoder = UnetDecoder(
            encoder_channels=[0, *(by_name[level].channels for level in levels)],
            decoder_channels=list(decoder_channels),
            n_blocks=len(levels),
            use_norm=decoder_norm,
            attention_type=attention,
            interpolation_mode=interpolation,
        )
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)
        initialize_decoder(self.decoder)
        initialize_head(self.segmentation_head)

    def forward(self, features: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        deepest, *skips = [features[level] for level in reversed(self.levels)]  # deepest first
        targets = [skip.shape[-2:] for skip in skips] + [size]
        x = self.decoder.center(deepest)
        for block, skip, (height, width) in zip(self.decoder.blocks, [*skips, None], targets):
            x = block(x, height, width, skip_connection=skip)  # (N, C_i, H_i, W_i)
        return self.segmentation_head(x)  # (N, num_classes, H, W)


class UNet(nn.Module):
    """A backbone and a :class:`UNetHead`: image in, per-pixel logits at the input size out.

    ``input_scale`` < 1 runs the network on the image shrunk by that factor and upsamples the logits back
    (bilinear), as segmentation test pipelines that resize do, but inside the model: training, evaluation,
    tiles, predict and export all see the one model, image in and logits at the input size out. The work goes
    with the square of the scale. The shrinking averages ``floor(1/scale)``-pixel blocks first, then
    interpolates, so that it does not alias; both export to ONNX.
    """

    def __init__(self, backbone: Backbone, head: UNetHead, *, input_scale: float = 1.0) -> None:
        super().__init__()
        if not 0 < input_scale <= 1:
            raise ValueError(f"input_scale={input_scale!r} is invalid: it must be in (0, 1]")
        self.backbone = backbone
        self.head = head
        self.input_scale = float(input_scale)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        if self.input_scale < 1:
            x = shrink(x, self.input_scale)
        features = self.backbone(x)  # c1..c5
        logits = self.head(features, (x.shape[-2], x.shape[-1]))  # (N, num_classes, h, w)
        if self.input_scale < 1:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits  # (N, num_classes, H, W)


def shrink(x: Tensor, scale: float) -> Tensor:
    """``x`` (N, C, H, W) resized by ``scale`` < 1: the means of ``floor(1/scale)``-pixel blocks, then bilinear
    interpolation by the factor left. Sizes follow the input through an exported graph (scale factors, not
    sizes fixed at export)."""
    block = int(1 / scale + 1e-6)
    if block > 1:
        x = F.avg_pool2d(x, block, ceil_mode=True)
    rest = scale * block
    if abs(rest - 1) < 1e-6:
        return x
    return F.interpolate(x, scale_factor=rest, mode="bilinear", align_corners=False)


class SegmentationLoss(nn.Module):
    """Cross-entropy and Dice, and their weighted sum; void pixels are ignored by both.

    Dice is smp's multiclass soft Dice over the batch, where classes absent from the batch's
    ground truth add nothing. Cross-entropy is torch's: smp's ``SoftCrossEntropyLoss`` averages
    over void pixels too (as zeros), which shrinks the loss by the void fraction of each batch.

    Returns ``{"ce", "dice", "loss"}``: a term whose weight is 0 is left out, and ``loss`` is
    the weighted total.
    """

    def __init__(
        self,
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"loss weights ce={ce_weight}, dice={dice_weight} must be >= 0 and not both 0")
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=label_smoothing)
        self.dice = DiceLoss("multiclass", ignore_index=ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        logits = logits.float()  # (N, C, H, W); the softmax stays in float32 under autocast
        terms: dict[str, Tensor] = {}
        if self.ce_weight:
            terms["ce"] = self.ce(logits, target)
        if self.dice_weight:
            terms["dice"] = self.dice(logits, target)
        weights = {"ce": self.ce_weight, "dice": self.dice_weight}
        terms["loss"] = sum(weights[name] * value for name, value in terms.items())  # type: ignore[assignment]
        return terms


_SMP_PREFIXES = (
    ("encoder.", "backbone."),
    ("decoder.", "head.decoder."),
    ("segmentation_head.", "head.segmentation_head."),
)


def from_smp_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an ``smp.Unet`` state dict (ResNet encoder) to this model's keys."""
    return rename_prefixes(state, _SMP_PREFIXES)


def to_smp_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename this model's state dict to ``smp.Unet``'s keys."""
    return rename_prefixes(state, tuple((new, old) for old, new in _SMP_PREFIXES))
