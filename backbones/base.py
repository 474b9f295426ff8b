"""The types every backbone and head share: FeatureInfo and the Backbone interface."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

LEVELS: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5")


class BackboneError(ValueError):
    """A backbone that cannot be built as asked (an unknown name, an invalid option), or that lacks the feature
    levels a head needs. A ``ValueError``; the task runners report it in one line."""


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns.

    Args:
        name: the level, ``"c1"`` .. ``"c5"`` (c1 is the stem at stride 2, c5 the last stage).
        channels: channels of the map.
        stride: input pixels per map pixel; dilation makes it smaller than ``2 ** level``.
    """

    name: str
    channels: int
    stride: int


def describe_levels(feature_info: Iterable[FeatureInfo]) -> str:
    """``c2 (stride 4), c3 (stride 8), ...``: what a backbone returns, for messages."""
    return ", ".join(f"{info.name} (stride {info.stride})" for info in feature_info)


def check_out_levels(out_levels: Iterable[str] | str, available: Sequence[str]) -> tuple[str, ...]:
    """Validate ``out_levels`` against what a backbone can produce, returned in stride order. One name alone
    (``"c5"``) is that level, not its letters."""
    wanted = (out_levels,) if isinstance(out_levels, str) else tuple(out_levels)
    unknown = [name for name in wanted if name not in available]
    if not wanted or unknown:
        raise BackboneError(f"out_levels={list(wanted)!r} is invalid: choose a non-empty subset of {list(available)}")
    return tuple(name for name in available if name in wanted)


class Backbone(nn.Module):
    """A feature extractor that returns named multi-scale maps.

    Subclasses set ``feature_info`` (one entry per returned level, in stride order) and
    implement ``forward(x) -> dict[str, Tensor]`` with exactly those keys. Heads are
    built from ``feature_info`` alone, so it must describe the real outputs for every
    option, dilation included.

    The base class also carries the two training-mode rules every backbone honours:
    modules listed in ``_frozen`` stay in eval mode, and with ``norm_eval`` every
    BatchNorm keeps its running statistics fixed.
    """

    feature_info: tuple[FeatureInfo, ...]

    def __init__(self) -> None:
        super().__init__()
        self.norm_eval = False
        self._frozen: list[nn.Module] = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def out_levels(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.feature_info)

    def output_shape(self) -> dict[str, FeatureInfo]:
        """Channels and stride per returned level, keyed by level name."""
        return {info.name: info for info in self.feature_info}

    def freeze(self, modules: Iterable[nn.Module]) -> None:
        """Stop gradients through ``modules`` and keep their norm layers in eval mode."""
        for module in modules:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
            self._frozen.append(module)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for module in self._frozen:
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self


def first_conv_in_channels(module: nn.Module) -> int:
    """Input channels of the first Conv2d in ``module``: what a dummy input must have."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    raise ValueError("backbone has no Conv2d to read its input channels from")
