"""tasks.model_summary: parameters and GFLOPs of a task model, split into backbone and heads, against torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from tasks.classify import build_model
from tasks.model_summary import model_size


def test_a_classifier_counts_as_torchvisions_resnet_with_its_fc_as_the_head() -> None:
    ours = build_model("resnet18", 10)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(torch.rand(1, 3, 96, 64))
    ours.train()
    size = model_size(ours, 96, 64)
    assert ours.training  # left as it was
    assert size.parameters == sum(p.numel() for p in reference.parameters())
    assert size.parameters - size.backbone_parameters == 512 * 10 + 10  # the linear head
    assert size.gflops == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)
    assert (size.gflops - size.backbone_gflops) * 1e9 == pytest.approx(2 * 512 * 10, rel=1e-9)  # fc: a MAC is 2
    line = size.line(96, 64)
    assert line.startswith("model: 11.2 M parameters (backbone 11.2 M, heads 0.0 M); ") and "per 96×64 image" in line
