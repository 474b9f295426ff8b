"""Any timm model behind the Backbone interface, through timm's ``features_only`` API."""

from __future__ import annotations

import difflib
import functools
import math
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.base import LEVELS, Backbone, BackboneError, FeatureInfo, check_out_levels
from backbones.weights import resolve_weights

PREFIX = "timm:"
TIMM_NORMS = ("bn", "frozen_bn", "sync_bn")  # what ``norm`` can do to a timm model's own layers


@functools.cache
def _normed_feature_getter() -> type[nn.Module]:
    """timm's feature getter with the model's final norm kept and applied to the maps, as its classifier and
    ``forward_features`` apply it to the tokens (a class made on first use: timm is imported only when needed)."""
    from timm.models._features import FeatureGetterNet  # not re-exported by timm.models

    class NormedFeatureGetter(FeatureGetterNet):
        def __init__(self, model: nn.Module, **kwargs: Any) -> None:
            super().__init__(model, norm=True, **kwargs)

    return NormedFeatureGetter


def _create(model_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` asking ViT-like models to take any input size (``dynamic_img_size``: their position
    embedding resized to the input's grid); a model without that argument is made without it."""
    import timm

    try:
        return timm.create_model(model_name, dynamic_img_size=True, **kwargs)
    except TypeError as error:
        if "dynamic_img_size" not in str(error):
            raise
        return timm.create_model(model_name, **kwargs)


def _is_plain(model_name: str, kwargs: dict[str, Any]) -> bool:
    """Whether timm serves the model's features through its feature getter with one stride for every map (ViT,
    DeiT, BEiT, EVA, DINOv2), told from a copy without weights made on the meta device (a tenth of a second, where
    a ViT-L's initialisation takes seconds), or on the CPU for a model that cannot be made there."""
    from timm.models._features import FeatureGetterNet  # not re-exported by timm.models

    bare = {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_cfg_overlay")}
    try:
        with torch.device("meta"):
            probe = _create(model_name, bare)
    except Exception:  # any failure there is the meta device's; the CPU copy decides
        probe = _create(model_name, bare)
    return isinstance(probe, FeatureGetterNet) and _one_stride(probe.feature_info.reduction())


def _one_stride(reductions: list[int]) -> bool:
    """Whether a timm model's maps all share one stride: a plain model's blocks (ViT, DeiT, BEiT, EVA, DINOv2)."""
    return len(reductions) > 1 and len(set(reductions)) == 1


def _pad_to_multiple(x: Tensor, patch: tuple[int, int]) -> Tensor:
    """``x`` padded with zeros at the right and bottom to a multiple of ``patch`` (where timm asserts). Under
    tracing (an export) always, with the amounts computed from the traced sizes, so the graph takes any size; timm's
    own ``dynamic_img_pad`` computes them in Python floats, which an ONNX graph keeps as the example's constants."""
    height, width = x.shape[-2:]
    if torch.jit.is_tracing() or height % patch[0] or width % patch[1]:
        x = F.pad(x, (0, (patch[1] - width % patch[1]) % patch[1], 0, (patch[0] - height % patch[0]) % patch[0]))
    return x


class SimplePyramid(nn.Module):
    """Levels c2..c5 (strides 4 to 32) from the one map of a plain, single-scale model such as a ViT: ViTDet's
    simple feature pyramid (Li et al., 2022, "Exploring Plain Vision Transformer Backbones for Object
    Detection"). From the map at stride ``2 ** base``, a finer level is made by 2x2 transposed convolutions of
    stride 2 that halve the channels (a LayerNorm and a GELU between two of them), the map's own level is the map,
    and a coarser level is max-pooled. The new layers start from torch's default initialisation, as ViTDet's.
    ``levels``: those to make (of c2..c5)."""

    def __init__(self, channels: int, base: int, levels: tuple[str, ...]) -> None:
        from timm.layers import LayerNorm2d

        super().__init__()
        self.base = base
        self.branches = nn.ModuleDict()
        for name in levels:
            steps = base - int(name[1:])  # > 0: upsample that many times; < 0: pool; 0: the map itself
            layers: list[nn.Module] = []
            width = channels
            for step in range(steps):
                if step:
                    layers += [LayerNorm2d(width), nn.GELU()]
                layers.append(nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2))
                width //= 2
            if steps < 0:
                layers.append(nn.MaxPool2d(kernel_size=2**-steps, stride=2**-steps))
            self.branches[name] = nn.Sequential(*layers)

    @staticmethod
    def channels_at(channels: int, base: int, level: int) -> int:
        return channels // 2 ** max(base - level, 0)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: branch(x) for name, branch in self.branches.items()}


class TimmBackbone(Backbone):
    """A timm model's feature maps, renamed to levels c1..c5 by their stride.

    The first map's level is ``log2(stride)``; each later map is the next level, so a
    dilated model (``output_stride=16``) still names its maps c2..c5 and reports their
    real strides. A plain model whose maps all share one stride (ViT, DeiT, BEiT, EVA: every block at its
    patch size) gives c2..c5 at strides 4 to 32 from its last block's map through :class:`SimplePyramid`, as
    ViTDet serves a detector from a ViT (patch 16: c4 is the map, c5 it pooled, c3 and c2 upsampled). Its blocks
    count as four equal stages for ``frozen_stages``: 0 freezes the patch embedding (with the class token and the
    position embedding), k the first k quarters of the blocks too. Where its stride is not a power of two
    (DINOv2's patch 14) it has no pyramid: its last block's map alone is c5, at its real stride, which
    classification reads and the FPN and U-Net refuse.

    Args:
        model_name: a timm model name, e.g. ``"convnext_tiny"``.
        weights: None; ``"timm"`` for timm's default pretrained tag (downloaded by timm);
            or a file path or URL of a checkpoint in timm's layout, loaded by timm's own
            filters (which adapt ``in_channels`` and drop the classifier).
        out_levels: levels to return; default, all the model has.
        in_channels: input channels.
        frozen_stages: -1 none, 0 the stem, k the stem and the modules up to level c(k+1).
        norm: ``"bn"``, the model's own norm layers; ``"frozen_bn"``, its BatchNorms frozen (timm's
            ``freeze_batch_norm_2d``, after the weights load), as detectors fine-tune a pretrained backbone;
            ``"sync_bn"``, synchronised across processes. ``"gn"`` rebuilds this library's ResNets only.
        norm_eval: keep BatchNorm statistics fixed in training mode.
        output_stride: passed to timm for models that support dilation.
        drop_path_rate: stochastic depth, for models that support it.
    """

    def __init__(
        self,
        model_name: str,
        *,
        weights: str | os.PathLike[str] | None = None,
        out_levels: tuple[str, ...] | list[str] | str | None = None,
        in_channels: int = 3,
        frozen_stages: int = -1,
        norm: str = "bn",
        norm_eval: bool = False,
        output_stride: int = 32,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        if norm not in TIMM_NORMS:
            raise BackboneError(
                f"norm={norm!r} is invalid for a timm model: choose one of {list(TIMM_NORMS)} "
                "('gn' replaces the norm layers of this library's ResNets only)"
            )
        if model_name not in timm.list_models():
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"similar names: {', '.join(close)}" if close else "timm.list_models() lists them"
            raise BackboneError(f"timm has no model {model_name!r}; {hint}")
        kwargs: dict[str, Any] = dict(features_only=True, in_chans=in_channels)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        if weights is not None:
            kwargs["pretrained"] = True
            if os.fspath(weights) != "timm":
                kwargs["pretrained_cfg_overlay"] = dict(file=str(resolve_weights(weights, model_name)))
        if _is_plain(model_name, kwargs):
            # timm's feature getter drops a plain model's final norm (and its trained weights), which its own head
            # and forward_features apply to every token: kept
            kwargs["feature_cls"] = _normed_feature_getter()
        self.model = _create(model_name, kwargs)
        reductions = self.model.feature_info.reduction()
        single = _one_stride(reductions)
        if norm == "frozen_bn":
            self.model = timm.layers.freeze_batch_norm_2d(self.model)
        elif norm == "sync_bn":
            self.model = timm.layers.convert_sync_batchnorm(self.model)
        # Swin and other token models return (N, H, W, C) maps; the heads read (N, C, H, W)
        self._nhwc = str(getattr(getattr(self.model, "output_fmt", None), "value", "NCHW")) == "NHWC"
        self.norm_eval = norm_eval

        channels = self.model.feature_info.channels()
        base = round(math.log2(reductions[-1]))
        plain = single and 2**base == reductions[-1] and 2 <= base <= 5
        if single and not plain:  # no pyramid (DINOv2's patch 14): its last map alone, for classification
            names = ["c5"]
            all_info = [FeatureInfo("c5", channels[-1], reductions[-1])]
        elif plain:
            names = list(LEVELS[1:])
            sizes = [SimplePyramid.channels_at(channels[-1], base, int(n[1:])) for n in names]
            all_info = [FeatureInfo(n, c, 2 ** int(n[1:])) for n, c in zip(names, sizes)]
        else:
            first_level = round(math.log2(reductions[0]))
            names = [f"c{first_level + i}" for i in range(len(reductions))]
            all_info = [FeatureInfo(n, c, r) for n, c, r in zip(names, channels, reductions)]
        asked = (out_levels,) if isinstance(out_levels, str) else tuple(out_levels or ())
        if single and not plain and set(asked) - {"c5"}:  # the detector asks for c2..c5
            raise BackboneError(
                f"timm model {model_name!r} has one map, at stride {reductions[-1]} (its patch), which is not a power "
                f"of two, so it has no feature pyramid: it returns c5 alone, for classification, where "
                f"out_levels={list(asked)} was asked (the FPN and the U-Net read c2..c5; a ViT of patch 16 gives them)"
            )
        wanted = check_out_levels(out_levels if out_levels is not None else names, names)
        self.feature_info = tuple(info for info in all_info if info.name in wanted)
        self._names = names
        self._module_names = self.model.feature_info.module_name()
        self.pyramid = SimplePyramid(channels[-1], base, self.out_levels) if plain else None
        self._single = single
        self._name = model_name
        embed = getattr(self._trunk, "patch_embed", None)  # a model timm gives no dynamic_img_size (BEiT) asserts
        fixed = getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None)
        self._fixed_size = tuple(int(side) for side in fixed) if fixed else None
        patch = getattr(embed, "patch_size", None) if single and not fixed else None
        self._patch = tuple(int(side) for side in patch) if patch else None
        if frozen_stages >= 0:
            self.freeze(self._modules_up_to(frozen_stages + 1))
            if single:  # the stem's own parameters: the class and register tokens, the position embedding
                for name in ("cls_token", "reg_token", "pos_embed"):
                    if isinstance(getattr(self._trunk, name, None), nn.Parameter):
                        getattr(self._trunk, name).requires_grad = False

    @property
    def _trunk(self) -> nn.Module:
        """The timm model inside a feature getter (ViT-like models), or the feature wrapper itself."""
        return getattr(self.model, "model", self.model)

    @property
    def own_level(self) -> str:
        """The deepest level the model computes itself: a plain model's own map (c4 for a ViT of patch 16, which
        its pyramid pools into c5 and upsamples into c3 and c2), else its last level. What a classifier reads."""
        if self.pyramid is not None:
            return f"c{self.pyramid.base}"
        return self._names[-1]

    def keep_levels(self, levels: tuple[str, ...] | list[str] | str) -> None:
        """Return only ``levels`` (of those built) from now on, dropping the pyramid's layers for the others: a
        head that reads one level leaves no parameters without a gradient, which DistributedDataParallel
        refuses."""
        wanted = check_out_levels(levels, self.out_levels)
        self.feature_info = tuple(info for info in self.feature_info if info.name in wanted)
        if self.pyramid is not None:
            for name in [n for n in self.pyramid.branches if n not in wanted]:
                del self.pyramid.branches[name]

    def _modules_up_to(self, level: int) -> list[nn.Module]:
        """The stem and every module until the one producing level ``c{level}``. A plain model makes every level
        from its last block, so there its blocks count as four equal stages: its patch embedding for level 1, and
        the first k quarters of its blocks with it for level k + 1 (a quarter of a ViT-B's 12 for the detector's
        default of freezing stage 1, as a ResNet's stem and first of four stages); all four freeze its final norm
        too, which every level is made after."""
        if self._single:
            blocks = list(getattr(self._trunk, "blocks", []))
            stem = [m for m in (getattr(self._trunk, "patch_embed", None),) if m is not None]
            last = [m for m in (getattr(self._trunk, "norm", None),) if m is not None and level > 4]
            return stem + blocks[: round(min(level - 1, 4) * len(blocks) / 4)] + last
        produced = {name.replace(".", "_"): int(n[1:]) for name, n in zip(self._module_names, self._names)}
        first_level = int(self._names[0][1:])
        modules, current = [], 1 if first_level > 1 else first_level
        for name, module in self.model.named_children():
            if current > level:
                break
            modules.append(module)
            if name in produced:
                current = produced[name] + 1
        return modules

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self._fixed_size is not None and tuple(x.shape[-2:]) != self._fixed_size:
            height, width = self._fixed_size
            raise BackboneError(
                f"timm model {self._name!r} takes {height} x {width} inputs only (timm has no dynamic_img_size for "
                f"it); this input is {x.shape[-2]} x {x.shape[-1]}: classify at --image-size {height}, or choose a "
                "model that takes any size (ViT, DeiT, EVA)"
            )
        if self._patch is not None:  # padded at the right and bottom to a multiple of the patch (DINOv2's 14)
            x = _pad_to_multiple(x, self._patch)
        maps = self.model(x)  # one (N, C, H/stride, W/stride) map per timm feature
        if self._nhwc:
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        if self.pyramid is not None:
            return self.pyramid(maps[-1])
        if self._single:
            return {"c5": maps[-1]}
        wanted = {info.name for info in self.feature_info}
        return {name: m for name, m in zip(self._names, maps) if name in wanted}
