"""Our Faster R-CNN against torchvision's fasterrcnn_resnet50_fpn with the same state dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from conftest import randomize_bn_stats

from heads.detection import FasterRCNNHead, from_torchvision_state_dict
from tasks.detect import build_model


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same_detections(want: list[dict], got: list[dict], *, at_least: int) -> None:
    """The same boxes (to 1e-3 px), labels and scores (to 1e-5) per image, with ``at_least`` boxes in each."""
    for w, g in zip(want, got, strict=True):
        assert len(w["boxes"]) >= at_least
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=0, atol=1e-3)
        assert torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["scores"], w["scores"], rtol=0, atol=1e-5)


def test_parameter_count_equals_torchvision() -> None:
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FasterRCNN

    # from scratch both use trainable BatchNorm
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    assert _count(build_model("resnet50", num_classes=91)) == _count(reference) == 41_808_406
    # the published configuration (frozen BatchNorm, whose statistics are buffers): torchvision's documented count
    frozen = FasterRCNN(
        _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=torchvision.ops.FrozenBatchNorm2d), 3), 91
    )
    assert _count(build_model("resnet50", num_classes=91, norm="frozen_bn")) == _count(frozen) == 41_755_286


def test_same_detections_as_torchvision_with_its_weights(tmp_path) -> None:
    options = dict(min_size=320, max_size=480, box_score_thresh=0.0)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, **options
    ).eval()
    randomize_bn_stats(reference)
    with torch.no_grad():  # a classifier bias so that scores spread out and rank stably
        reference.roi_heads.box_predictor.cls_score.bias.copy_(torch.linspace(-2, 2, 91))
    torch.save(reference.state_dict(), tmp_path / "frcnn.pth")

    ours = build_model("resnet50", num_classes=91, **options).eval()
    state = torch.load(tmp_path / "frcnn.pth", weights_only=True)
    ours.load_state_dict(from_torchvision_state_dict(state))

    images = [torch.rand(3, 300, 410), torch.rand(3, 357, 299)]
    with torch.no_grad():
        want, got = reference(images), ours(images)
    assert_same_detections(want, got, at_least=1)


def test_training_returns_the_four_losses() -> None:
    model = build_model("resnet18", num_classes=3, min_size=128, max_size=128).train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])}] * 2
    losses = model([torch.rand(3, 128, 128), torch.rand(3, 100, 120)], targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert model.backbone.conv1.weight.grad is not None


def test_box_coding_stays_float32_under_bfloat16_autocast() -> None:
    """A ground-truth sliver 0.4 px high at the image's bottom edge: in bfloat16 (1 px steps from 128 px) it
    would become a 0-px box, and its regression target log(0 / 0) a NaN box loss."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, min_size=160, max_size=160, box_batch_size_per_image=16).train()
    proposals = []
    model.head.rpn.register_forward_hook(lambda module, args, out: proposals.extend(out[0]))
    boxes = torch.tensor([[30.4, 159.6, 62.7, 160.0], [20.0, 20.0, 90.0, 100.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 1])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([torch.rand(3, 160, 160)], targets)
    assert proposals and all(p.dtype == torch.float32 for p in proposals)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_box_reg"].dtype == torch.float32
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([torch.rand(3, 160, 160)])
    assert out[0]["boxes"].dtype == out[0]["scores"].dtype == torch.float32


@pytest.mark.parametrize("backbone", ["resnet50d", "timm:convnext_atto", "timm:vit_tiny_patch16_224"])
def test_head_is_built_from_feature_info_of_any_backbone(backbone: str) -> None:
    model = build_model(backbone, num_classes=5, min_size=160, max_size=160).eval()
    channels = [info.channels for info in model.backbone.feature_info]
    assert [block[0].in_channels for block in model.head.fpn.inner_blocks] == channels
    with torch.no_grad():
        out = model([torch.rand(3, 160, 200)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_pretrained_defaults_freeze_bn_and_the_stem(tmp_path) -> None:
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    model = build_model("resnet50", num_classes=3, weights=str(tmp_path / "r50.pth"))
    assert isinstance(model.backbone.bn1, torchvision.ops.FrozenBatchNorm2d)
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if n.startswith("backbone.") and not p.requires_grad}
    assert frozen == {"conv1", "layer1"}
    scratch = build_model("resnet50", num_classes=3)
    assert isinstance(scratch.backbone.bn1, torch.nn.BatchNorm2d) and all(p.requires_grad for p in scratch.parameters())


def test_head_rejects_missing_levels_and_bad_anchor_levels() -> None:
    from backbones import build_backbone

    info = build_backbone("resnet18", out_levels=("c4", "c5")).feature_info
    with pytest.raises(ValueError, match="needs"):
        FasterRCNNHead(info, 3)
    full = build_backbone("resnet18", out_levels=("c2", "c3", "c4", "c5")).feature_info
    with pytest.raises(ValueError, match="anchor_sizes has 2 levels"):
        FasterRCNNHead(full, 3, anchor_sizes=((32,), (64,)))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_threaded_roi_align_equals_torchvision_to_the_bit(
    threads: int, dtype: torch.dtype, layout: torch.memory_format, monkeypatch
) -> None:
    from torchvision.ops import MultiScaleRoIAlign

    import heads.detection as detection

    generator = torch.Generator().manual_seed(0)
    names, sides = ["p2", "p3", "p4", "p5"], [200, 100, 50, 25]  # an 800 px image's FPN levels
    features = {
        n: torch.randn(2, 96, s, s, generator=generator).to(dtype).contiguous(memory_format=layout).requires_grad_()
        for n, s in zip(names, sides)
    }
    corners = torch.rand(2, 60, 2, generator=generator) * 200
    extent = 8 + torch.rand(2, 60, 2, generator=generator) * 600  # from 8 to 600 px a side: every level
    boxes = [torch.cat([c, (c + e).clamp(max=800)], dim=1) for c, e in zip(corners, extent)]
    splits: list[int] = []
    run_split = detection._run_split
    monkeypatch.setattr(
        detection, "_run_split", lambda work, parts: splits.append(len(parts)) or run_split(work, parts)
    )
    ours, reference = detection.ThreadedMultiScaleRoIAlign(names, 7, 2), MultiScaleRoIAlign(names, 7, 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outputs, gradients = [], []
        for pool in (ours, reference):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = pool(features, boxes, [(800, 800)] * 2)
            weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            gradients.append(torch.autograd.grad((out.float() * weight).sum(), list(features.values())))
            outputs.append(out)
    finally:
        torch.set_num_threads(previous)
    assert len(set(ours.map_levels(boxes).tolist())) == 4  # the boxes reach every level
    # the threaded path ran: 4 levels, forward and backward; a channels-last level is first made NCHW, an image
    # per thread
    forward = [2, threads] if layout == torch.channels_last else [threads]
    assert splits == forward * 4 + [threads] * 4
    assert outputs[0].dtype == outputs[1].dtype == dtype and torch.equal(outputs[0], outputs[1])
    for a, b in zip(*gradients):
        assert a.dtype == dtype and a.abs().sum() > 0 and torch.equal(a, b)


def test_threaded_roi_align_skips_the_levels_no_roi_maps_to(monkeypatch) -> None:
    """Small boxes map to the first level alone (the main job's 128 px images): the other levels are neither pooled
    nor given a gradient of zeros, and the outputs and gradients are torchvision's, to the bit (a level left out of
    the graph has the zero gradient torchvision adds)."""
    from torchvision.ops import MultiScaleRoIAlign

    import heads.detection as detection

    generator = torch.Generator().manual_seed(0)
    names, sides = ["p2", "p3", "p4", "p5"], [32, 16, 8, 4]
    features = {
        n: torch.randn(2, 64, s, s, generator=generator).bfloat16().contiguous(memory_format=torch.channels_last)
        for n, s in zip(names, sides)
    }
    features = {n: f.requires_grad_() for n, f in features.items()}
    corners = torch.rand(2, 40, 2, generator=generator) * 90
    boxes = [torch.cat([c, c + 4 + torch.rand(40, 2, generator=generator) * 30], dim=1) for c in corners]
    pooled: list[int] = []
    split = detection._ChannelSplitRoIAlign.apply
    monkeypatch.setattr(
        detection._ChannelSplitRoIAlign,
        "apply",
        lambda f, rois, *rest: pooled.append(len(rois)) or split(f, rois, *rest),
    )
    ours, reference = detection.ThreadedMultiScaleRoIAlign(names, 7, 2), MultiScaleRoIAlign(names, 7, 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outputs, gradients = [], []
        for pool in (ours, reference):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = pool(features, boxes, [(128, 128)] * 2)
            weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            found = torch.autograd.grad((out.float() * weight).sum(), list(features.values()), allow_unused=True)
            gradients.append([torch.zeros_like(f) if g is None else g for f, g in zip(features.values(), found)])
            outputs.append(out)
    finally:
        torch.set_num_threads(previous)
    assert set(ours.map_levels(boxes).tolist()) == {0} and pooled == [80]  # one level pooled, every RoI on it
    assert torch.equal(outputs[0], outputs[1])
    for level, (a, b) in enumerate(zip(*gradients)):
        assert torch.equal(a, b) and (a.abs().sum() > 0) == (level == 0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_inference_form_detects_what_the_eager_model_detects(channels_last) -> None:
    """``fast_model_inference`` (the detect runner's eval and predict): BatchNorm folded into a frozen backbone,
    the heads' weights channels-last or not; the same detections to float rounding."""
    from backbones import InferenceBackbone, fast_model_inference

    torch.manual_seed(0)
    eager = build_model("resnet18", num_classes=5, min_size=160, max_size=224, box_score_thresh=0.0).eval()
    randomize_bn_stats(eager)
    with torch.no_grad():  # a classifier bias so that scores spread out and rank stably
        eager.head.roi_heads.box_predictor.cls_score.bias.copy_(torch.linspace(-2, 2, 5))
    fast = fast_model_inference(copy.deepcopy(eager), channels_last=channels_last)
    assert isinstance(fast.backbone, InferenceBackbone) and not fast.training
    convolutions = [m for m in fast.head.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    layouts = {m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions}
    assert convolutions and layouts == {channels_last}

    images = [torch.rand(3, 150, 200), torch.rand(3, 181, 143)]
    with torch.no_grad():
        want, got = eager(images), fast(images)
    assert_same_detections(want, got, at_least=11)


@pytest.mark.parametrize(
    ("capability", "device", "nhwc"),
    [
        ("AVX512", None, True),
        ("AVX2", None, False),
        ("DEFAULT", "cpu", False),
        ("AVX2", "cuda", True),  # off the CPU the host's instruction set does not choose
        ("AVX512", "cuda:0", True),
    ],
)
def test_the_inference_form_lays_the_heads_out_channels_last_only_on_avx512_cpus_or_off_the_cpu(
    monkeypatch, capability, device, nhwc
) -> None:
    from backbones import fast_model_inference

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    model = build_model("resnet18", num_classes=3, min_size=64, max_size=64)
    model = fast_model_inference(model, device=device)  # laid out for the device named, its parameters left put
    conv3x3 = next(m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv3x3.weight.is_contiguous(memory_format=torch.channels_last) is nhwc


def test_a_channels_last_map_is_made_nchw_exactly_in_and_out_of_inference_mode() -> None:
    """RoIAlign's CPU kernels read NCHW; the copy that makes a channels-last map NCHW (an image per thread, as
    transposed matrices) must hold the same values, also in inference mode, which the pool's threads do not
    inherit."""
    from heads.detection import _nchw

    nchw = torch.randn(3, 40, 17, 23, generator=torch.Generator().manual_seed(0))
    assert _nchw(nchw) is nchw
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for inference in (False, True):
            with torch.inference_mode(inference):
                nhwc = nchw.contiguous(memory_format=torch.channels_last)
                got = _nchw(nhwc)
            assert got.is_contiguous() and torch.equal(got, nchw)
    finally:
        torch.set_num_threads(previous)


def test_the_split_roi_aligns_pool_threads_run_with_one_openmp_thread_and_leave_torchs_count() -> None:
    """The pool threads beside torch's own run their parallel operations (zero fills, copies) on a one-thread
    OpenMP team: a team of torch's size in each would spin on the same cores. torch's count is unchanged."""
    import ctypes

    import heads.detection as detection

    try:
        max_threads = ctypes.CDLL(None).omp_get_max_threads
    except (AttributeError, OSError):
        pytest.skip("no OpenMP runtime in the process's global symbols")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # new threads start with torch's count: 2, whatever the test runner set
    try:
        with detection._POOL_LOCK:
            for pool in detection._POOL.values():
                pool.shutdown()
            detection._POOL.clear()
        seen = detection._run_split(lambda _: (max_threads(), torch.get_num_threads()), [0, 1, 2])
        assert seen[0] == (2, 2) and seen[1:] == [(1, 1), (1, 1)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
