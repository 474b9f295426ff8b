"""Any timm model behind the Backbone interface, through timm's ``features_only`` API."""

from __future__ import annotations

import difflib
import math
import os
from typing import Any

from torch import Tensor, nn

from backbones.base import Backbone, BackboneError, FeatureInfo, check_out_levels
from backbones.weights import resolve_weights

PREFIX = "timm:"
TIMM_NORMS = ("bn", "frozen_bn", "sync_bn")  # what ``norm`` can do to a timm model's own layers


class TimmBackbone(Backbone):
    """A timm model's feature maps, renamed to levels c1..c5 by their stride.

    The first map's level is ``log2(stride)``; each later map is the next level, so a
    dilated model (``output_stride=16``) still names its maps c2..c5 and reports their
    real strides.

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
        try:  # ViT-like models take any input size only when asked; the others have no such argument
            self.model = timm.create_model(model_name, dynamic_img_size=True, **kwargs)
        except TypeError as error:
            if "dynamic_img_size" not in str(error):
                raise
            self.model = timm.create_model(model_name, **kwargs)
        if norm == "frozen_bn":
            self.model = timm.layers.freeze_batch_norm_2d(self.model)
        elif norm == "sync_bn":
            self.model = timm.layers.convert_sync_batchnorm(self.model)
        # Swin and other token models return (N, H, W, C) maps; the heads read (N, C, H, W)
        self._nhwc = str(getattr(getattr(self.model, "output_fmt", None), "value", "NCHW")) == "NHWC"
        self.norm_eval = norm_eval

        reductions = self.model.feature_info.reduction()
        channels = self.model.feature_info.channels()
        first_level = round(math.log2(reductions[0]))
        names = [f"c{first_level + i}" for i in range(len(reductions))]
        all_info = [FeatureInfo(n, c, r) for n, c, r in zip(names, channels, reductions)]
        wanted = check_out_levels(out_levels if out_levels is not None else names, names)
        self.feature_info = tuple(info for info in all_info if info.name in wanted)
        self._names = names
        self._module_names = self.model.feature_info.module_name()
        if frozen_stages >= 0:
            self.freeze(self._modules_up_to(frozen_stages + 1))

    def _modules_up_to(self, level: int) -> list[nn.Module]:
        """The stem and every module until the one producing level ``c{level}``."""
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
        maps = self.model(x)  # one (N, C, H/stride, W/stride) map per timm feature
        if self._nhwc:
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        wanted = {info.name for info in self.feature_info}
        return {name: m for name, m in zip(self._names, maps) if name in wanted}
