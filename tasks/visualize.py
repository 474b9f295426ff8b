"""Pictures of results, drawn with torchvision's drawing utilities and Pillow, and written atomically."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tasks.io import PNG_OPTIONS, atomic_write

PREDICTED_COLOUR = (255, 140, 0)
TRUTH_COLOUR = (40, 200, 40)


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` (RGB, or a palette mask) as a PNG, atomically, with ``tasks.io.PNG_OPTIONS``."""
    return atomic_write(path, lambda handle: image.save(handle, format="PNG", **PNG_OPTIONS))


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float],
    *,
    truth_boxes: np.ndarray | None = None,
    truth_labels: Sequence[str] = (),
) -> Image.Image:
    """Predicted boxes in orange with class and score; ground truth, when given, in green (torchvision's
    ``draw_bounding_boxes``). Images smaller than 512 px are enlarged first, so that labels stay legible."""
    from torchvision.utils import draw_bounding_boxes

    canvas = Image.fromarray(image).convert("RGB")
    scale = max(1, 512 // max(canvas.size))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    pixels = torch.from_numpy(np.array(canvas)).permute(2, 0, 1)  # (3, H, W) uint8
    layers = []
    if truth_boxes is not None and len(truth_boxes):
        layers.append((truth_boxes, [str(name) for name in truth_labels], TRUTH_COLOUR))
    if len(boxes):
        layers.append((boxes, [f"{name} {score:.2f}" for name, score in zip(labels, scores)], PREDICTED_COLOUR))
    for found, names, colour in layers:
        pixels = draw_bounding_boxes(
            pixels, torch.as_tensor(np.asarray(found, np.float32)).reshape(-1, 4) * scale, names, colors=colour, width=2
        )
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def voc_palette(size: int = 256) -> np.ndarray:
    """Pascal VOC's colour map, (size, 3) uint8: the bits of each class index spread over R, G and B,
    most significant first; index 255 (void) is the usual cream."""
    colours = np.zeros((size, 3), np.uint8)
    for index in range(size):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[index] = (r, g, b)
    if size > 255:
        colours[255] = (224, 224, 192)
    return colours


def palette_mask(mask: np.ndarray) -> Image.Image:
    """A class-index mask as a palette PNG image: pixel values stay the indices, viewers show VOC colours."""
    image = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    image.putpalette(voc_palette().flatten().tolist())
    return image


def overlay_mask(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.5) -> Image.Image:
    """The image with each non-background class blended in its VOC colour (torchvision's
    ``draw_segmentation_masks``)."""
    from torchvision.utils import draw_segmentation_masks

    mask = np.asarray(mask, np.uint8)
    classes = [int(c) for c in np.unique(mask) if c != 0]
    pixels = torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)  # a copy: a cached image is read-only
    if not classes:
        return Image.fromarray(np.asarray(image, np.uint8))
    masks = torch.from_numpy(np.stack([mask == c for c in classes]))
    colours = [tuple(int(v) for v in voc_palette()[c]) for c in classes]
    blended = draw_segmentation_masks(pixels, masks, alpha=alpha, colors=colours)
    return Image.fromarray(blended.permute(1, 2, 0).numpy())


def overlay_cam(image: np.ndarray, cam: np.ndarray, *, image_weight: float = 0.5) -> Image.Image:
    """A class activation map (H, W) in [0, 1] over the RGB image (H, W, 3) uint8 as a jet heat map
    (pytorch-grad-cam's ``show_cam_on_image``)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if cam.shape != image.shape[:2]:
        raise ValueError(f"a {cam.shape} map cannot overlay a {image.shape[:2]} image")
    rgb = np.asarray(image, np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(rgb, np.clip(cam, 0.0, 1.0), use_rgb=True, image_weight=image_weight))


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (6.0, 4.5)) -> bytes:
    """A matplotlib figure (files only, no display) drawn by ``draw(axes)``, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def pr_curve_png(curves: dict[str, Any]) -> bytes:
    """Precision against recall at IoU 0.5 per class (with its AP50 in the legend) and their mean."""
    recall = np.asarray(curves["recall"])

    def draw(axes: Any) -> None:
        defined = []
        for name, precision in curves["precision"].items():
            if all(p is None for p in precision):
                continue
            values = np.asarray([p or 0.0 for p in precision])
            defined.append(values)
            axes.plot(recall, values, linewidth=1, label=f"{name} {values.mean():.3f}")
        if defined:
            mean = np.mean(defined, axis=0)
            axes.plot(recall, mean, linewidth=3, color="blue", label=f"all classes {mean.mean():.3f} AP50")
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall, IoU 0.5")
        axes.grid(alpha=0.3)
        if defined:
            axes.legend(fontsize=8, loc="best")
        else:  # matplotlib warns of a legend with nothing in it
            axes.text(0.5, 0.5, "no class has a box in this split", ha="center", va="center")

    return _figure_png(draw)


def f1_curve_png(f1: dict[str, Any]) -> bytes:
    """F1 against the confidence threshold per class and their mean, with the best mean F1 marked."""

    def draw(axes: Any) -> None:
        for name, values in f1["per_class"].items():
            axes.plot(f1["confidence"], values, linewidth=1, label=name)
        axes.plot(f1["confidence"], f1["mean"], linewidth=3, color="blue",
                  label=f"all classes {f1['best_f1']:.2f} at {f1['best_confidence']:.2f}")  # fmt: skip
        axes.set(xlabel="confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02), title="F1 against confidence")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")

    return _figure_png(draw)


def confusion_png(confusion: np.ndarray, class_names: Sequence[str], *, normalize: bool, title: str) -> bytes:
    """A confusion matrix, rows true and columns predicted: counts, or each row's shares (``normalize``)."""
    counts = np.asarray(confusion, dtype=np.float64)
    shown = counts / counts.sum(axis=1, keepdims=True).clip(min=1) if normalize else counts
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2.5), 16.0)

    def draw(axes: Any) -> None:
        image = axes.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
        axes.figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        wrapped = "\n".join(textwrap.wrap(title, int(side * 8)))  # a small matrix's narrow figure keeps it whole
        axes.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=wrapped)
        axes.set_xticklabels([str(c)[:14] for c in class_names], rotation=90, fontsize=7 if n > 12 else 9)
        axes.set_yticklabels([str(c)[:14] for c in class_names], fontsize=7 if n > 12 else 9)
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    text = f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                    dark = shown[i, j] > (0.5 if normalize else shown.max() / 2)
                    axes.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        axes.grid(False)

    return _figure_png(draw, (side, side))


def bars_png(values: dict[str, float | None], *, title: str, ylabel: str) -> bytes:
    """One bar per name (None: left empty and marked n/a), with its value written above."""
    names = list(values)

    def draw(axes: Any) -> None:
        heights = [values[name] or 0.0 for name in names]
        bars = axes.bar(range(len(names)), heights, color="tab:blue")
        for bar, name in zip(bars, names):
            value = values[name]
            axes.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                      "n/a" if value is None else f"{value:.2f}", ha="center", fontsize=7)  # fmt: skip
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels([str(n)[:14] for n in names], rotation=90 if len(names) > 6 else 0, fontsize=8)
        axes.set(ylim=(0, 1.08), ylabel=ylabel, title=title)

    return _figure_png(draw, (max(6.0, 0.4 * len(names) + 2), 4.5))


def image_grid_png(images: Sequence[np.ndarray], titles: Sequence[str], *, columns: int = 4) -> bytes:
    """Images in a grid, each with its title (e.g. the most confident mistakes)."""
    rows = max(-(-len(images) // columns), 1)

    def draw(axes: Any) -> None:
        axes.axis("off")
        figure = axes.figure
        for index, (image, title) in enumerate(zip(images, titles)):
            cell = figure.add_subplot(rows, columns, index + 1)
            cell.imshow(image)
            cell.set_title(title, fontsize=8)
            cell.axis("off")

    return _figure_png(draw, (2.6 * columns, 2.8 * rows))
