"""Pictures of results, drawn with torchvision's drawing utilities and Pillow, and written atomically."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tasks.io import atomic_write

PREDICTED_COLOUR = (255, 140, 0)
TRUTH_COLOUR = (40, 200, 40)


def save_png(image: Image.Image, path: Path) -> Path:
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def confusion_matrix_image(confusion: np.ndarray, class_names: Sequence[str], *, cell: int = 36) -> Image.Image:
    """Rows are true classes, columns predictions; shade is the row-normalised rate, text the count."""
    confusion = np.asarray(confusion)
    n = len(class_names)
    font = ImageFont.load_default()
    label_width = min(max((len(str(c)) for c in class_names), default=1) * 7 + 10, 160)
    margin_top = 40
    width, height = label_width + n * cell + 10, margin_top + n * cell + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    rows = confusion.sum(axis=1, keepdims=True).clip(min=1)
    rates = confusion / rows
    for i in range(n):
        y = margin_top + i * cell
        draw.text((4, y + cell // 2 - 5), str(class_names[i])[:22], fill="black", font=font)
        for j in range(n):
            x = label_width + j * cell
            shade = int(255 * (1 - rates[i, j]))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            text = str(int(confusion[i, j]))
            draw.text((x + 4, y + cell // 2 - 5), text, fill="white" if rates[i, j] > 0.5 else "black", font=font)
    for j in range(n):
        draw.text((label_width + j * cell + 4, margin_top - 14), str(class_names[j])[:5], fill="black", font=font)
    draw.text((4, 4), "confusion matrix (rows: true, columns: predicted)", fill="black", font=font)
    return image


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
    pixels = torch.from_numpy(np.ascontiguousarray(image, np.uint8)).permute(2, 0, 1)
    if not classes:
        return Image.fromarray(np.asarray(image, np.uint8))
    masks = torch.from_numpy(np.stack([mask == c for c in classes]))
    colours = [tuple(int(v) for v in voc_palette()[c]) for c in classes]
    blended = draw_segmentation_masks(pixels, masks, alpha=alpha, colors=colours)
    return Image.fromarray(blended.permute(1, 2, 0).numpy())


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (6.0, 4.5)) -> bytes:
    """A matplotlib figure (files only, no display) drawn by ``draw(axes)``, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    draw(axes)
    axes.grid(alpha=0.3)
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
        axes.legend(fontsize=8, loc="best")

    return _figure_png(draw)


def f1_curve_png(f1: dict[str, Any]) -> bytes:
    """F1 against the confidence threshold per class and their mean, with the best mean F1 marked."""

    def draw(axes: Any) -> None:
        for name, values in f1["per_class"].items():
            axes.plot(f1["confidence"], values, linewidth=1, label=name)
        axes.plot(f1["confidence"], f1["mean"], linewidth=3, color="blue",
                  label=f"all classes {f1['best_f1']:.2f} at {f1['best_confidence']:.2f}")  # fmt: skip
        axes.set(xlabel="confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02), title="F1 against confidence")
        axes.legend(fontsize=8, loc="best")

    return _figure_png(draw)
