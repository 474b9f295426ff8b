"""``python -m backbones``: every registered backbone in one table; ``python -m backbones NAME`` for one.

    python -m backbones                             # parameters, GFLOPs at 224, feature_info of each
    python -m backbones resnet50 --image-size 512   # one backbone (or timm:<model>) at another size

GFLOPs are torch's FlopCounterMode count of one forward pass of one image to c5, in eval mode (convolutions and
matrix products; a multiply and an add counted apart). feature_info lists each level as name:channels/stride.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from backbones import build_backbone, list_backbones


def describe(name: str, image_size: int) -> tuple[str, str, str, str]:
    """(name, parameters in millions, GFLOPs of one image_size² forward, feature_info) of backbone ``name``."""
    model = build_backbone(name).eval()
    image = torch.zeros(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    parameters = sum(p.numel() for p in model.parameters())
    levels = " ".join(f"{f.name}:{f.channels}/{f.stride}" for f in model.feature_info)
    return name, f"{parameters / 1e6:.1f}", f"{counter.get_total_flops() / 1e9:.2f}", levels


def table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backbones", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="backbones to show (default: every registered one)")
    parser.add_argument("--image-size", type=int, default=224, help="the square input the GFLOPs are counted at")
    args = parser.parse_args(argv)
    if args.image_size < 32:
        parser.error(f"--image-size {args.image_size}: must be at least 32 (the stride of c5)")
    names = args.names or list_backbones()
    try:
        rows = [describe(name, args.image_size) for name in names]
    except ValueError as error:  # an unknown name: build_backbone lists the valid ones
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    header = ("backbone", "params (M)", f"GFLOPs at {args.image_size}", "feature_info (level:channels/stride)")
    print(table(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
