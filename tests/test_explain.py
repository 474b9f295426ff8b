"""Class activation maps (tasks.explain): the level grad-cam hooks is the one the head reads, every backbone
works, and a detector trained on the built-in shapes has its EigenCAM on the shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from tasks.classify import build_model as build_classifier
from tasks.detect import build_model as build_detector
from tasks.explain import eigen_cam, grad_cam, input_view


def _grad_cam_on(model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: list[int]) -> np.ndarray:
    cam = GradCAM(model=model, target_layers=[layer])
    try:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        cam.activations_and_grads.release()


def test_grad_cam_taps_the_level_the_head_reads() -> None:
    """The tapped c5 gives what grad-cam gives when it hooks the ResNet's last stage (layer4) by name."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3).eval()
    images = torch.randn(2, 3, 64, 96)
    ours = grad_cam(model.backbone, model.head, images, [0, 2])
    reference = _grad_cam_on(model, model.backbone.layer4, images, [0, 2])
    assert ours.shape == (2, 64, 96) and ours.dtype == np.float32
    assert ours.std() > 0.05  # a map with structure, not a constant that any layer would match
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    other = grad_cam(model.backbone, model.head, images, [1, 1])  # another class, another map
    assert np.abs(other - ours).max() > 0.05


def test_grad_cam_with_a_frozen_backbone_and_under_inference_mode() -> None:
    """A linear probe's backbone has no gradients of its own; the map comes through the input's."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, freeze_backbone=True).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():  # predict's mode: grad_cam turns gradients back on for itself
        frozen = grad_cam(model.backbone, model.head, images, [1])
    for param in model.backbone.parameters():
        param.requires_grad_(True)
    np.testing.assert_allclose(frozen, _grad_cam_on(model, model.backbone.layer4, images, [1]), atol=1e-5)
    assert frozen.std() > 0.05


@pytest.mark.parametrize("backbone", ["timm:convnext_tiny", "resnext50_32x4d"])
def test_grad_cam_on_other_backbones(backbone) -> None:
    torch.manual_seed(0)
    model = build_classifier(backbone, 4).eval()
    images = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        logits = model(images)
    maps = grad_cam(model.backbone, model.head, images, logits.argmax(1).tolist())
    assert maps.shape == (2, 96, 64) and np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0, abs=1e-3) and maps.std() > 0.01


def test_eigen_cam_reads_the_detectors_c5_and_lines_up_with_the_image() -> None:
    torch.manual_seed(0)
    detector = build_detector("resnet18", 4, min_size=128, max_size=128).eval()

    class C5(nn.Module):  # the detector's own transform, then the whole c5 by its stage's name
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, images):
            batch, _ = detector.transform(list(images))
            return detector.backbone(batch.tensors)["c5"]

    image = torch.rand(3, 64, 64)  # resized to 128 x 128: no padding, so cutting to the image changes nothing
    ours = eigen_cam(detector, image)
    reference = EigenCAM(model=C5(), target_layers=[detector.backbone.layer4])
    try:
        want = reference(input_tensor=image[None], targets=[])[0]
    finally:
        reference.activations_and_grads.release()
    assert ours.shape == (64, 64) and ours.std() > 0.01
    np.testing.assert_allclose(ours, want, atol=1e-5)
    wide = eigen_cam(detector, torch.rand(3, 50, 90))  # resized to 71 x 128, padded to 96 x 128: cut back
    assert wide.shape == (50, 90) and np.isfinite(wide).all()


def test_input_view_undoes_the_normalisation() -> None:
    from tasks.data.transforms import classification_eval

    picture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    view = input_view(classification_eval(32, crop_pct=1.0)(picture))
    assert view.dtype == np.uint8 and np.abs(view.astype(int) - picture.astype(int)).max() <= 1


SIZE = 128


@pytest.fixture(scope="module")
def shapes_detector(tmp_path_factory):
    """A ResNet-18 Faster R-CNN trained briefly on the built-in shapes."""
    from tasks.data.embedded import shapes_dataset
    from tasks.detect import main

    root = tmp_path_factory.mktemp("cam")
    data = shapes_dataset(root / "shapes", size=SIZE, train_images=32, val_images=16)
    run = root / "run"
    argv = ["--data", str(data), "--backbone", "resnet18", "--epochs", "3", "--batch-size", "4", "--workers", "0"]
    argv += ["--set", f"model.min_size={SIZE}", "--set", f"model.max_size={SIZE}", "--seed", "0", "--output", str(run)]
    argv += ["--no-amp"]  # float32 on every machine: the auto precision is bfloat16 where the CPU has bf16 units
    assert main(argv) == 0
    return data, run


def test_eigen_cam_of_a_shapes_detector_lies_on_the_labelled_shapes(shapes_detector) -> None:
    """For every val image, the EigenCAM's mean inside the labelled boxes against its mean outside them. On average
    the inside is well above the outside, and above the mean under the same boxes moved to random places (a
    control that a map unrelated to the shapes, or one misaligned with the image, would match)."""
    from tasks.data.images import load_rgb
    from tasks.detect import _load_model

    data, run = shapes_detector
    detector, _ = _load_model(run / "best.pt")
    detector.eval()
    document = json.loads((data / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(0)
    inside, outside, moved = [], [], []
    for entry in document["images"]:
        image = torch.from_numpy(np.array(load_rgb(data / "val" / entry["file_name"]))).permute(2, 0, 1).float() / 255
        cam = eigen_cam(detector, image)
        assert cam.shape == (SIZE, SIZE)
        mask, control = np.zeros(cam.shape, bool), np.zeros(cam.shape, bool)
        for annotation in document["annotations"]:
            if annotation["image_id"] == entry["id"]:
                x, y, w, h = (int(round(v)) for v in annotation["bbox"])
                mask[y : y + h, x : x + w] = True
                mx, my = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
                control[my : my + h, mx : mx + w] = True
        inside.append(cam[mask].mean())
        outside.append(cam[~mask].mean())
        moved.append(cam[control].mean())
    assert len(inside) == 16  # measured on this machine: inside 0.42, outside 0.24, moved boxes 0.34
    assert np.mean(inside) > 1.3 * np.mean(outside), (np.mean(inside), np.mean(outside))
    assert np.mean(inside) > 1.1 * np.mean(moved), (np.mean(inside), np.mean(moved))
