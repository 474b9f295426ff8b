"""Faster R-CNN with FPN over any backbone, assembled from torchvision's building blocks.

The FPN's input channels, the RoI pooler's levels and the anchor levels all come from the
backbone's ``feature_info``. Module names below ``fpn``, ``rpn`` and ``roi_heads`` are
torchvision's, so :func:`from_torchvision_state_dict` maps a torchvision detector's
checkpoint onto this head with renaming alone.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from backbones.base import Backbone, BackboneError, FeatureInfo, describe_levels
from heads.state_dict import rename_prefixes

DETECTION_LEVELS = ("c2", "c3", "c4", "c5")
DEFAULT_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Detections = list[dict[str, Tensor]]


class Float32RPNHead(RPNHead):
    """torchvision's RPN head, its outputs in float32 under autocast: proposals are decoded from them, and a
    bfloat16 box has 8 bits of mantissa, 1 px steps from 128 px. The RoI head casts the ground-truth boxes to
    the proposals' dtype, so a 0.4 px sliver at y 159.6-160 became a 0-px box and a NaN regression target."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's box predictor, its scores and box deltas in float32 under autocast (see
    :class:`Float32RPNHead`): the detections and the box losses are computed in float32."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


MIN_CHANNELS_PER_SPLIT = 32  # each slice repeats a RoI's sampling geometry: at most 8 slices of an FPN's 256
_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _one_openmp_thread() -> None:
    """A pool thread's start: ATen's own set-up for a new thread first (it sets the thread's OpenMP team to
    torch's thread count), then an OpenMP team of one for this thread alone (the setting is per thread in
    libgomp; ``torch.set_num_threads`` would change every thread's). The pool's work runs beside torch's threads,
    one slice a core: the zero fills and copies inside it would otherwise start a team of their own, whose
    threads spin on the same cores between calls. The main job's training ran 8.4-8.8 images/s with the split
    RoIAlign and 10.1-10.2 without it; 10.6 with this (docs/results.md, "The split RoIAlign's own OpenMP
    threads")."""
    torch.get_num_threads()
    try:
        set_threads = ctypes.CDLL(None).omp_set_num_threads
    except (AttributeError, OSError, TypeError):  # no OpenMP runtime in the process, or no global symbol table
        return
    set_threads(1)


def _run_split(work: Any, parts: Sequence[Any]) -> list[Tensor]:
    """``work`` on each part, the first in this thread and the others in a pool's threads at the same time:
    torchvision's RoIAlign kernels run on one core and release the GIL. Each pool thread runs with one OpenMP
    thread (:func:`_one_openmp_thread`)."""
    if len(parts) == 1:
        return [work(parts[0])]
    with _POOL_LOCK:
        if len(parts) - 1 not in _POOL:
            _POOL[len(parts) - 1] = ThreadPoolExecutor(len(parts) - 1, initializer=_one_openmp_thread)
        pool = _POOL[len(parts) - 1]
    # a new thread starts outside inference mode and with autograd on, whatever this one's: an autograd Function's
    # forward runs without autograd, and two threads' recorded copies into views of one tensor race (a flaky
    # "leaf Variable ... in-place" error in the channels-last RoIAlign test)
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_mode(part: Any) -> Tensor:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return work(part)

    pending = [pool.submit(in_mode, part) for part in parts[1:]]
    first = work(parts[0])
    return [first, *(future.result() for future in pending)]


def _nchw(features: Tensor) -> Tensor:
    """``features`` in NCHW memory, which torchvision's RoIAlign CPU kernels read. A channels-last map (a
    detector whose heads run channels-last) is copied one image at a time, each image's (H*W, C) matrix
    transposed, images in parallel: ATen copies a transposed matrix in cache-sized tiles, 3.5x faster than
    ``.contiguous()`` on a 2x256x200x272 map, which the kernel would otherwise make of each channel slice
    (docs/results.md, "oneDNN's fused convolutions without TorchScript")."""
    if features.is_contiguous() or not features.is_contiguous(memory_format=torch.channels_last):
        return features
    n, c, h, w = features.shape
    out = torch.empty((n, c, h, w), dtype=features.dtype, device=features.device)
    rows = features.permute(0, 2, 3, 1)  # each image's pixels by channels, contiguous

    def transpose(image: int) -> Tensor:
        return out[image].view(c, h * w).copy_(rows[image].reshape(h * w, c).t())

    _run_split(transpose, range(n))
    return out


class _ChannelSplitRoIAlign(torch.autograd.Function):
    """torchvision's RoIAlign (``torchvision::roi_align`` and ``torchvision::_roi_align_backward``, the CPU
    kernels), each run on ``splits`` slices of the channels at once. Its CPU kernels loop on one core; every
    channel is pooled, and its gradient accumulated, independently of the others, so the result is the same
    to the bit. Computed in float32 whatever the input's dtype, as torchvision's autocast wrapper does."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        features: Tensor,
        rois: Tensor,
        scale: float,
        output_size: tuple[int, int],
        sampling_ratio: int,
        splits: int,
    ) -> Tensor:
        rois = rois.float()
        ctx.save_for_backward(rois)
        ctx.options = (scale, output_size, sampling_ratio, splits, features.shape, features.dtype)
        height, width = output_size

        def pool(part: Tensor) -> Tensor:
            return torch.ops.torchvision.roi_align(part, rois, scale, height, width, sampling_ratio, False)

        with torch.autocast("cpu", enabled=False):
            parts = _run_split(pool, _nchw(features.float()).tensor_split(splits, dim=1))
        return torch.cat(parts, dim=1).to(features.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        scale, (height, width), sampling_ratio, splits, shape, dtype = ctx.options

        def gradient(part: Tensor) -> Tensor:
            return torch.ops.torchvision._roi_align_backward(
                part, rois, scale, height, width, shape[0], part.shape[1], shape[2], shape[3], sampling_ratio, False
            )

        with torch.autocast("cpu", enabled=False):
            parts = _run_split(gradient, grad.float().tensor_split(splits, dim=1))
        return torch.cat(parts, dim=1).to(dtype), None, None, None, None, None


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` whose RoIAlign runs on all of torch's threads when it trains or
    infers on the CPU: the channels are split into one slice per thread (:class:`_ChannelSplitRoIAlign`).
    Its levels, scales and outputs are torchvision's, equal to the bit. With one thread, on another device,
    and while tracing (export) or compiling, it is torchvision's own forward."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        splits = min(torch.get_num_threads(), features[0].shape[1] // MIN_CHANNELS_PER_SPLIT)
        if (
            splits < 2
            or features[0].device.type != "cpu"
            or features[0].is_quantized
            or torchvision._is_tracing()
            or torch.compiler.is_compiling()
        ):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        size = (int(self.output_size[0]), int(self.output_size[1]))
        if len(features) == 1:
            return _ChannelSplitRoIAlign.apply(features[0], rois, self.scales[0], size, self.sampling_ratio, splits)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            if not len(index):  # a level no RoI maps to: nothing to pool, and no gradient for it to add
                continue  # (torchvision pools none and adds zeros: the main job's step spent 4-7 ms on three)
            pooled = _ChannelSplitRoIAlign.apply(feature, rois[index], scale, size, self.sampling_ratio, splits)
            result[index] = pooled.to(result.dtype)
        return result


class FasterRCNNHead(nn.Module):
    """FPN, region proposal network and box head over the backbone's c2..c5 (plus a max-pooled P6).

    Args:
        feature_info: the backbone's ``feature_info``; it must hold every level in ``levels``.
        num_classes: classes including background (torchvision's convention: COCO is 91).
        levels: backbone levels fed to the FPN, shallowest first.
        fpn_channels: FPN output channels.
        anchor_sizes: one tuple of sizes per pyramid level, P6 included (``len(levels) + 1``).
        aspect_ratios: anchor height/width ratios, the same at every level.
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: proposals kept per level before NMS.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals kept per image after NMS.
        rpn_nms_thresh, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
        rpn_positive_fraction: the RPN's matching and sampling.
        box_batch_size_per_image, box_positive_fraction, box_fg_iou_thresh, box_bg_iou_thresh:
            RoI sampling for the box head.
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference post-processing.
        representation_size: width of the two-layer box MLP.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        *,
        levels: Sequence[str] = DETECTION_LEVELS,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[Sequence[int]] = DEFAULT_ANCHOR_SIZES,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        representation_size: int = 1024,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} is invalid: it counts the background, so at least 2")
        by_name = {info.name: info for info in feature_info}
        missing = [level for level in levels if level not in by_name]
        if missing:
            raise BackboneError(
                f"the backbone returns {describe_levels(feature_info)}, but the detection head's FPN needs "
                f"{', '.join(levels)}"
            )
        if len(anchor_sizes) != len(levels) + 1:
            raise ValueError(
                f"anchor_sizes has {len(anchor_sizes)} levels; it needs {len(levels) + 1} "
                f"(one per FPN level {list(levels)} and one for the pooled P6)"
            )
        self.levels = tuple(levels)
        self.pyramid_names = [f"p{level[1:]}" for level in levels] + [f"p{int(levels[-1][1:]) + 1}"]
        self.fpn = FeaturePyramidNetwork(
            [by_name[level].channels for level in levels], fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        anchors = AnchorGenerator(
            tuple(tuple(sizes) for sizes in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes)
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            Float32RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            rpn_nms_thresh,
        )
        pooler = ThreadedMultiScaleRoIAlign(self.pyramid_names[:-1], output_size=7, sampling_ratio=2)
        self.roi_heads = RoIHeads(
            pooler,
            TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            Float32BoxPredictor(representation_size, num_classes),
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            None,
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
        )

    def forward(
        self, features: Mapping[str, Tensor], images: ImageList, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[Detections, dict[str, Tensor]]:
        pyramid = self.fpn(OrderedDict((level, features[level]) for level in self.levels))  # 256 channels each
        pyramid = OrderedDict(zip(self.pyramid_names, pyramid.values()))  # p2..p5 and the pooled p6
        proposals, rpn_losses = self.rpn(images, pyramid, targets)
        detections, box_losses = self.roi_heads(pyramid, proposals, images.image_sizes, targets)
        return detections, {**rpn_losses, **box_losses}


class FasterRCNN(nn.Module):
    """Images in, torchvision-style detections out: resize and normalise, backbone, head, rescale.

    In training, ``forward(images, targets)`` returns the dict of the four losses; in
    evaluation it returns one ``dict(boxes, labels, scores)`` per image, in that image's
    original pixel coordinates. ``images`` are float (3, H, W) tensors in [0, 1].
    """

    def __init__(
        self,
        backbone: Backbone,
        head: FasterRCNNHead,
        *,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std))
        self.backbone = backbone
        self.head = head

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> Detections | dict[str, Tensor]:
        if self.training and targets is None:
            raise ValueError("FasterRCNN needs targets in training mode")
        # Shape elements, not ints: under ONNX tracing they stay dynamic, as in torchvision's GeneralizedRCNN.
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]
        batch, targets = self.transform(images, targets)  # padded (N, 3, H', W') plus sizes
        features = self.backbone(batch.tensors)
        detections, losses = self.head(features, batch, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


_TORCHVISION_PREFIXES = (
    ("backbone.body.", "backbone."),
    ("backbone.fpn.", "head.fpn."),
    ("rpn.", "head.rpn."),
    ("roi_heads.", "head.roi_heads."),
)


def from_torchvision_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision Faster R-CNN state dict (``fasterrcnn_resnet50_fpn`` and kin) to ours."""
    return rename_prefixes(state, _TORCHVISION_PREFIXES)
