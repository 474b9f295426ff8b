"""python -m backbones: the table of parameters, GFLOPs and feature_info, checked against torchvision's ResNet-18."""

from __future__ import annotations

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from backbones.__main__ import main


def test_one_backbone_at_another_size_against_torchvision(capsys) -> None:
    assert main(["resnet18", "--image-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["backbone", "params"] and "GFLOPs at 64" in lines[0]
    name, params, gflops, *levels = lines[2].split()
    reference = torchvision.models.resnet18().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(torch.zeros(1, 3, 64, 64))
    trunk = counter.get_total_flops() - 2 * 512 * 1000  # torchvision's count less its fc layer
    fc = sum(p.numel() for p in reference.fc.parameters())
    assert name == "resnet18" and params == f"{(sum(p.numel() for p in reference.parameters()) - fc) / 1e6:.1f}"
    assert gflops == f"{trunk / 1e9:.2f}"
    assert levels == ["c1:64/2", "c2:64/4", "c3:128/8", "c4:256/16", "c5:512/32"]


def test_an_unknown_name_is_one_line(capsys) -> None:
    assert main(["resnet19"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "resnet19" in err and "\n" not in err
