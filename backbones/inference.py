"""A faster inference form of any traceable backbone: BatchNorm folded into convolutions, channels-last."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx.experimental.optimization import fuse

from backbones.base import Backbone


class InferenceBackbone(Backbone):
    """An eval-only copy of a backbone with the same outputs (to float rounding) and ``feature_info``.

    Each BatchNorm that follows a convolution is folded into that convolution's weights and
    bias (torch.fx's ``fuse``), and weights and inputs use the channels-last layout that
    oneDNN and cuDNN convolutions prefer. Built for ``eval`` and ``predict``; training it is
    an error because the folded statistics would no longer be statistics.
    """

    def __init__(self, backbone: Backbone, *, channels_last: bool = True) -> None:
        super().__init__()
        self.feature_info = backbone.feature_info
        was_training = backbone.training
        self.graph = fuse(backbone.eval())
        backbone.train(was_training)
        self.channels_last = channels_last
        if channels_last:
            self.graph = self.graph.to(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode: bool = True) -> InferenceBackbone:
        if mode:
            raise RuntimeError("InferenceBackbone is for inference only; train the original backbone")
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.graph(x)


def optimize_for_inference(backbone: Backbone, *, channels_last: bool = True) -> InferenceBackbone:
    """Fold BatchNorm into convolutions and switch to channels-last; see :class:`InferenceBackbone`."""
    return InferenceBackbone(backbone, channels_last=channels_last)
