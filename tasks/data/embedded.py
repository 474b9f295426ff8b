"""Built-in default data, made once from packages already installed, so first runs need no download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_VERSION = "digits-v1"


def cache_root() -> Path:
    base = os.environ.get("MTB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "multitask-backbones"
    )
    return Path(base)


def digits_imagefolder(root: Path | None = None, *, size: int = 32) -> Path:
    """scikit-learn's 1,797 handwritten digits (8×8) as a 32×32 PNG ImageFolder.

    Every fifth image of each class goes to ``val`` (deterministic, 355 images); the rest
    to ``train``. Built once into a temporary folder and renamed into place, so a run
    that is interrupted never leaves a half-written dataset behind.
    """
    root = root or cache_root()
    target = root / f"{DIGITS_VERSION}-{size}px"
    if (target / "val").is_dir():
        return target
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    seen = np.zeros(10, dtype=int)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        split = "val" if seen[label] % 5 == 4 else "train"
        seen[label] += 1
        folder = staging / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
        image.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{index:04d}.png")
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


SHAPES_VERSION = "shapes-v2"
SHAPES = ("square", "circle", "triangle")


def shapes_dataset(root: Path | None = None, *, size: int = 128, train_images: int = 320, val_images: int = 80) -> Path:
    """A small dataset of squares, circles and triangles on noisy backgrounds, with three kinds of labels.

    Deterministic (seed 0): ``train/`` and ``val/`` PNGs, one to three objects of 18-56 px per
    image, overlapping little. Each image has
      - boxes in COCO format: ``annotations/instances_<split>.json``;
      - a class-index mask: ``masks/<split>/<name>.png`` (0 background, 1 square, 2 circle,
        3 triangle), with the names in ``classes.txt``;
      - an image label, its largest shape: ``<split>.csv`` rows of ``<split>/<name>.png,<shape>``.
    Built once in a staging folder and renamed into place.
    """
    from PIL import ImageDraw

    root = root or cache_root()
    target = root / f"{SHAPES_VERSION}-{size}px"
    if (target / "annotations" / "instances_val.json").is_file():
        return target
    import json

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root))
    (staging / "annotations").mkdir()
    (staging / "classes.txt").write_text("\n".join(("background", *SHAPES)) + "\n")
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES)]
    for split, count in (("train", train_images), ("val", val_images)):
        (staging / split).mkdir()
        (staging / "masks" / split).mkdir(parents=True)
        images, annotations, rows = [], [], []
        for image_id in range(1, count + 1):
            background = rng.integers(60, 140, 3)
            pixels = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            mask = Image.new("L", (size, size), 0)
            draws = (ImageDraw.Draw(image), ImageDraw.Draw(mask))
            placed: list[tuple[float, float, float, float]] = []
            largest = (0.0, "")
            for _ in range(int(rng.integers(1, 4))):
                for _attempt in range(20):
                    extent = float(rng.uniform(18, 56))
                    x1, y1 = (float(v) for v in rng.uniform(0, size - extent, 2))
                    box = (x1, y1, x1 + extent, y1 + extent)
                    if all(_iou(box, other) < 0.1 for other in placed):
                        break
                else:
                    continue
                placed.append(box)
                label = int(rng.integers(0, len(SHAPES)))
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                for draw, fill in zip(draws, (colour, label + 1)):
                    if SHAPES[label] == "square":
                        draw.rectangle(box, fill=fill)
                    elif SHAPES[label] == "circle":
                        draw.ellipse(box, fill=fill)
                    else:
                        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=fill)
                largest = max(largest, (extent, SHAPES[label]))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [round(box[0], 2), round(box[1], 2), round(extent, 2), round(extent, 2)],
                        "area": round(extent * extent, 2),
                        "iscrowd": 0,
                    }
                )
            name = f"{image_id:05d}.png"
            image.save(staging / split / name)
            mask.save(staging / "masks" / split / name)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            rows.append(f"{split}/{name},{largest[1]}")
        document = {"images": images, "annotations": annotations, "categories": categories}
        (staging / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
        (staging / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
