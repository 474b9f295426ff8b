"""One line about a task model at the start of training: its parameters and its GFLOPs per image at the training
size, each split into the backbone and the head(s).

FLOPs are counted by torch's FlopCounterMode over one forward pass in eval mode (convolutions and matrix
products, a multiply and an add counted apart); a detector's count includes its RPN and box head for that image's
proposals, and leaves out NMS and RoIAlign, which are not matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    backbone_parameters: int
    gflops: float  # one forward of one image at the given size
    backbone_gflops: float

    def line(self, height: int, width: int) -> str:
        heads, head_flops = self.parameters - self.backbone_parameters, self.gflops - self.backbone_gflops
        return (
            f"model: {self.parameters / 1e6:.1f} M parameters (backbone {self.backbone_parameters / 1e6:.1f} M, "
            f"heads {heads / 1e6:.1f} M); {self.gflops:.2f} GFLOPs per {height}×{width} image "
            f"(backbone {self.backbone_gflops:.2f}, heads {head_flops:.2f})"
        )


def _flops(call: object) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()  # type: ignore[operator]
    return float(counter.get_total_flops())


def model_size(model: nn.Module, height: int, width: int) -> ModelSize:
    """The parameters of ``model`` and of its ``backbone``, and the FLOPs of one eval-mode forward of one
    ``height``×``width`` image through the model, and through the backbone at the size the model hands it (a
    detector resizes its input, a shrunk U-Net shrinks it). The model is left in the mode it was in."""
    backbone: nn.Module = model.backbone  # type: ignore[assignment]
    device = next(model.parameters()).device
    image = torch.rand(1, 3, height, width, device=device)
    seen: list[torch.Size] = []
    hook = backbone.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = _flops(lambda: model(image))
            hook.remove()
            given = torch.rand(seen[0], device=device) if seen else image
            trunk = _flops(lambda: backbone(given))
    finally:
        hook.remove()
        model.train(was_training)
    return ModelSize(
        parameters=sum(p.numel() for p in model.parameters()),
        backbone_parameters=sum(p.numel() for p in backbone.parameters()),
        gflops=total / 1e9,
        backbone_gflops=trunk / 1e9,
    )
