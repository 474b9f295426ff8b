"""Object detection: Faster R-CNN with FPN on any backbone.

This module's command line (train, eval, predict on COCO and VOC data) is being built;
``build_model`` is the stable entry point for users who import the detector.
"""

from __future__ import annotations

from typing import Any

from backbones import build_backbone
from heads.detection import DETECTION_LEVELS, FasterRCNN, FasterRCNNHead

TASK = "detect"


def build_model(
    backbone: str,
    num_classes: int,
    *,
    weights: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    frozen_stages: int | None = None,
    norm: str | None = None,
    **head_options: Any,
) -> FasterRCNN:
    """Faster R-CNN + FPN on ``backbone``; ``num_classes`` counts the background (COCO: 91).

    With pretrained ``weights`` the backbone defaults to frozen BatchNorm and a frozen stem and
    first stage (torchvision's ``trainable_backbone_layers=3``); from scratch it defaults to
    trainable BatchNorm and nothing frozen, because frozen statistics that were never learned
    are only the initial ones (torchvision PR #5443). ``head_options`` go to
    :class:`heads.detection.FasterRCNNHead`. With default options on ``resnet50`` the model
    has exactly the parameters, and with the same weights the same detections, as
    torchvision's ``fasterrcnn_resnet50_fpn``.
    """
    pretrained = weights is not None
    options: dict[str, Any] = dict(out_levels=DETECTION_LEVELS)
    if not backbone.startswith("timm:"):
        options["norm"] = norm or ("frozen_bn" if pretrained else "bn")
    options["frozen_stages"] = frozen_stages if frozen_stages is not None else (1 if pretrained else -1)
    net = build_backbone(backbone, weights=weights, **options)
    head = FasterRCNNHead(net.feature_info, num_classes, **head_options)
    return FasterRCNN(net, head, min_size=min_size, max_size=max_size)
