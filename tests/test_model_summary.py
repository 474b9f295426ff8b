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


def test_a_shrunk_unets_backbone_is_counted_at_the_size_it_runs_at() -> None:
    from tasks.segment import build_model as build_unet

    model = build_unet("resnet18", 3, input_scale=0.5)
    backbone = torchvision.models.resnet18()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone(torch.rand(1, 3, 64, 48))  # torchvision's trunk on the half-size image (its fc: 2 x 512 x 1000)
    size = model_size(model, 128, 96)
    assert size.backbone_gflops * 1e9 == pytest.approx(counter.get_total_flops() - 2 * 512 * 1000, rel=1e-9)
    half = model_size(build_unet("resnet18", 3), 64, 48)  # the decoder also runs at half size
    assert (size.gflops, size.backbone_gflops) == pytest.approx((half.gflops, half.backbone_gflops), rel=1e-9)
