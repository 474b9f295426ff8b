"""Datasets for the learning benchmark, built offline from the photos that scikit-image and scikit-learn ship.

Every set is a plain on-disk layout that the runners read as a user's data (an ImageFolder, or images/ and
masks/ with classes.txt), so the benchmark trains through ``--data`` exactly as a user would. Each set has a
role: ``tune`` sets are the ones the auto recipe's rules were developed on; ``report`` sets were built after
the rules were fixed and are the ones the benchmark reports. The two are kept apart on purpose.

Sets are written once into the cache (``$MTB_CACHE``), through a staging folder renamed into place.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.data.embedded import cache_root
from tasks.errors import UserError

VERSION = "v3"


@dataclass(frozen=True)
class BenchmarkSet:
    name: str
    tasks: tuple[str, ...]  # the runners it has labels for
    role: str  # "tune" or "report"
    description: str
    build: Callable[[Path, float], None]  # (folder, scale): scale < 1 makes a smaller copy for --quick


def _photos() -> dict[str, np.ndarray]:
    """The bundled photos as RGB uint8 arrays."""
    try:
        import skimage.data as data
    except ImportError:
        raise UserError(
            "the learning benchmark builds its datasets from scikit-image's photos: pip install scikit-image"
        ) from None
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "rocket",
        "retina",
        "hubble_deep_field",
        "coins",
        "moon",
        "page",
        "text",
        "brick",
        "grass",
        "gravel",
        "cell",
        "clock",
        "immunohistochemistry",
        "colorwheel",
    ]
    photos = {name: getattr(data, name)() for name in names}
    for name, image in zip(("china", "flower"), load_sample_images().images):
        photos[name] = image
    return {name: np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for name, p in photos.items()}


def _crop(rng: np.random.Generator, image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(side, height, width)
    y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    return image[y : y + side, x : x + side]


def _resize(image: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(size, resample))


def _count(n: int, scale: float) -> int:
    return max(2, round(n * scale))


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _patch_folder(
    folder: Path,
    scale: float,
    classes: list[str],
    per_class: tuple[int, int],
    crop: tuple[float, float],
    size: tuple[int, int],
    seed: int,
) -> None:
    """An ImageFolder whose class is the photo a random square crop came from; crop sides are a fraction
    of the photo's shorter side, resized to a random side in ``size``; random flips and quarter turns."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    for name in classes:
        photo = photos[name]
        for split, count in zip(("train", "val"), per_class):
            for index in range(_count(count, scale)):
                side = int(min(photo.shape[:2]) * rng.uniform(*crop))
                patch = _crop(rng, photo, max(side, 8))
                patch = np.rot90(patch, int(rng.integers(0, 4)))
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
                out = int(rng.integers(size[0], size[1] + 1))
                _save(folder / split / name / f"{index:04d}.png", _resize(np.ascontiguousarray(patch), (out, out)))


def _textures(folder: Path, scale: float) -> None:
    classes = ["brick", "grass", "gravel", "camera", "coffee", "chelsea", "astronaut", "rocket"]
    _patch_folder(folder, scale, classes, (80, 25), (0.08, 0.18), (30, 67), seed=7)


def _tiny(folder: Path, scale: float) -> None:
    """Patches of four of the textures set's photos at 22-28 px, 40 a class to train: a small set of tiny images,
    where a training step's fixed cost (the optimizer, the layers' overhead) outweighs its images'."""
    classes = ["brick", "grass", "camera", "coffee"]
    _patch_folder(folder, scale, classes, (40, 40), (0.08, 0.18), (22, 28), seed=17)


def _photos20(folder: Path, scale: float) -> None:
    classes = sorted(_photos())
    _patch_folder(folder, scale, classes, (110, 30), (0.1, 0.4), (48, 128), seed=11)


def _scenes(folder: Path, scale: float) -> None:
    classes = ["brick", "grass", "gravel", "moon", "cell", "camera"]
    _patch_folder(folder, scale, classes, (50, 17), (0.25, 0.6), (512, 640), seed=13)


def _faces(folder: Path, scale: float) -> None:
    """scikit-image's LFW subset: 100 faces and 100 other 25×25 patches (grayscale)."""
    import skimage.data as data

    images = data.lfw_subset()
    for label, name in enumerate(("face", "other")):
        for index, pixels in enumerate(images[label * 100 : label * 100 + _count(100, scale)]):
            split = "val" if index % 4 == 3 else "train"
            _save(folder / split / name / f"{index:03d}.png", (pixels * 255).astype(np.uint8))


def _composed(
    folder: Path,
    names: list[str],
    samples: list[tuple[np.ndarray, np.ndarray, list[int]]],
    labels: list[str] | None = None,
) -> None:
    """The built-in shapes set's layout, so one folder serves segment, detect and multitask: ``<split>/*.png``,
    class-index masks in ``masks/<split>/`` with ``classes.txt``, COCO boxes in ``annotations/``, and an image
    label in ``<split>.csv``: ``labels[i]`` where given, else the class with the most visible pixels. A sample is
    (image, instance map with 0 for none and i for instance i, the 1-based class of each instance)."""
    import json

    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(["background", *names]) + "\n", encoding="utf-8")
    documents = {split: {"images": [], "annotations": [], "categories": []} for split in ("train", "val")}
    rows: dict[str, list[str]] = {"train": [], "val": []}
    for index, (image, instances, classes) in enumerate(samples):
        split, name = ("val" if index % 5 == 4 else "train"), f"{index:04d}.png"
        semantic = np.zeros(instances.shape, np.uint8)
        document = documents[split]
        height, width = instances.shape
        document["images"].append({"id": index + 1, "file_name": name, "width": width, "height": height})
        areas = np.zeros(len(names) + 1)
        for instance, label in enumerate(classes, 1):
            ys, xs = np.nonzero(instances == instance)
            if len(ys) < 16:  # hidden behind later objects
                continue
            semantic[ys, xs] = label
            areas[label] += len(ys)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            document["annotations"].append(
                {
                    "id": len(document["annotations"]) + 1,
                    "image_id": index + 1,
                    "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(len(ys)),
                    "iscrowd": 0,
                }
            )
        _save(folder / split / name, image)
        _save(folder / "masks" / split / name, semantic)
        label = labels[index] if labels is not None else names[int(areas[1:].argmax())]
        rows[split].append(f"{split}/{name},{label}")
    for split, document in documents.items():
        document["categories"] = [{"id": i, "name": n} for i, n in enumerate(names, 1)]
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
        (folder / f"{split}.csv").write_text("path,label\n" + "\n".join(rows[split]) + "\n", encoding="utf-8")


def _coins(folder: Path, scale: float) -> None:
    """Coins against their background, from scikit-image's coins photo: the mask is its Otsu threshold with
    holes filled and specks removed (the classic scikit-image segmentation), cut into random crops. The image
    label counts the coins that are at least half in view: "0-2", "3-5" or "6+"."""
    import skimage.data as data
    from scipy import ndimage
    from skimage.filters import sobel, threshold_otsu
    from skimage.segmentation import watershed

    coins = data.coins()
    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2  # scikit-image's own region-based example
    mask = ndimage.binary_fill_holes(watershed(sobel(coins), markers) == 2)
    mask &= coins > threshold_otsu(coins) * 0.5
    mask = ndimage.binary_opening(mask, iterations=2)
    rng = np.random.default_rng(17)
    samples, labels = [], []
    whole, _ = ndimage.label(mask)
    full_area = np.bincount(whole.ravel())
    for _ in range(_count(200, scale)):
        side = int(rng.integers(96, 192))
        y, x = int(rng.integers(0, coins.shape[0] - side)), int(rng.integers(0, coins.shape[1] - side))
        image, target = coins[y : y + side, x : x + side], mask[y : y + side, x : x + side]
        turns = int(rng.integers(0, 4))
        image, target = np.rot90(image, turns), np.rot90(target, turns)
        instances, count = ndimage.label(np.ascontiguousarray(target))
        samples.append((np.stack([np.ascontiguousarray(image)] * 3, -1), instances, [1] * count))
        seen = np.bincount(whole[y : y + side, x : x + side].ravel(), minlength=len(full_area))
        coins_in_view = int((seen[1:] * 2 >= full_area[1:]).sum())
        labels.append("0-2" if coins_in_view <= 2 else "3-5" if coins_in_view <= 5 else "6+")
    _composed(folder, ["coin"], samples, labels)


def _pasted(folder: Path, scale: float) -> None:
    """Ellipses and polygons cut from five colour photos, 1-4 per image, on grayscale texture backgrounds;
    the class is the photo an object's content comes from."""
    photos = _photos()
    sources = ["chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field"]
    backgrounds = ["grass", "gravel", "brick", "moon", "page"]
    rng = np.random.default_rng(19)
    samples = []
    for _ in range(_count(500, scale)):
        size = 192
        image = _resize(np.ascontiguousarray(_crop(rng, photos[str(rng.choice(backgrounds))], 256)), (size, size))
        instances, classes = np.zeros((size, size), np.int32), []
        for _ in range(int(rng.integers(1, 5))):
            label = int(rng.integers(0, len(sources)))
            w, h = int(rng.integers(30, 90)), int(rng.integers(30, 90))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            stencil = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(stencil)
            if rng.random() < 0.5:
                draw.ellipse([x, y, x + w, y + h], fill=1)
            else:
                draw.polygon(_star(rng, (x, y, w, h), corners=(3, 8), radius=(0.6, 1.0)), fill=1)
            inside = np.asarray(stencil).astype(bool)
            image = _fill(rng, image, inside, photos[sources[label]], 160)
            classes.append(label + 1)
            instances[inside] = len(classes)
        samples.append((image, instances, classes))
    _composed(folder, sources, samples)


def _star(
    rng: np.random.Generator, box: tuple[int, int, int, int], *, corners: tuple[int, int], radius: tuple[float, float]
) -> list[tuple[float, float]]:
    """A random star-shaped polygon inside ``box`` (x, y, w, h): ``corners`` from integers(*corners), each at a
    random share ``radius`` of the half-box from its centre."""
    x, y, w, h = box
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(*corners))))
    radii = rng.uniform(*radius, len(angles))
    return [(x + w / 2 * (1 + r * np.cos(a)), y + h / 2 * (1 + r * np.sin(a))) for a, r in zip(angles, radii)]


def _fill(rng: np.random.Generator, image: np.ndarray, inside: np.ndarray, photo: np.ndarray, side: int) -> np.ndarray:
    """``image`` with the pixels ``inside`` taken from a random ``side``-pixel crop of ``photo``, resized to it."""
    height, width = inside.shape
    content = _resize(np.ascontiguousarray(_crop(rng, photo, side)), (width, height))
    return np.where(inside[..., None], content, image)


def _background(
    rng: np.random.Generator,
    photos: dict[str, np.ndarray],
    names: list[str],
    sides: tuple[int, int],
    crop: tuple[int, int],
) -> np.ndarray:
    """A random square crop (its side drawn from ``crop``) of one of ``names``' photos, resized to a random width and
    height drawn from ``sides``."""
    width, height = int(rng.integers(*sides)), int(rng.integers(*sides))
    back = _crop(rng, photos[str(rng.choice(names))], int(rng.integers(*crop)))
    return _resize(np.ascontiguousarray(back), (width, height))


def _star_mask(
    rng: np.random.Generator,
    shape: tuple[int, int],
    share: tuple[float, float],
    corners: tuple[int, int],
    radius: tuple[float, float],
) -> np.ndarray:
    """A boolean (height, width) mask of a star-shaped polygon (:func:`_star`) in a random box whose sides are a
    random ``share`` of the image's."""
    height, width = shape
    w, h = int(width * rng.uniform(*share)), int(height * rng.uniform(*share))
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    stencil = Image.new("L", (width, height), 0)
    ImageDraw.Draw(stencil).polygon(_star(rng, (x, y, w, h), corners=corners, radius=radius), fill=1)
    return np.asarray(stencil).astype(bool)


def _horses(folder: Path, scale: float) -> None:
    """scikit-image's horse silhouette, scaled, mirrored and placed on large photo crops, filled with a
    texture of another photo: one object class at 400-560 px. The image label is the photo the horse is
    filled with (4 classes)."""
    import skimage.data as data

    photos = _photos()
    horse = ~data.horse()
    fills = ["chelsea", "coffee", "rocket", "immunohistochemistry"]
    backgrounds = ["retina", "hubble_deep_field", "china", "flower", "astronaut", "camera"]
    rng = np.random.default_rng(23)
    samples, labels = [], []
    for _ in range(_count(200, scale)):
        image = _background(rng, photos, backgrounds, (400, 561), (250, 400))
        height, width = image.shape[:2]
        shape_w = int(width * rng.uniform(0.35, 0.8))
        shape_h = int(shape_w * horse.shape[0] / horse.shape[1])
        stencil = _resize(horse.astype(np.uint8) * 255, (shape_w, min(shape_h, height - 1)), nearest=True) > 127
        if rng.random() < 0.5:
            stencil = stencil[:, ::-1]
        x, y = int(rng.integers(0, width - stencil.shape[1] + 1)), int(rng.integers(0, height - stencil.shape[0] + 1))
        mask = np.zeros((height, width), np.uint8)
        mask[y : y + stencil.shape[0], x : x + stencil.shape[1]] = stencil
        labels.append(str(rng.choice(fills)))
        fill = _resize(np.ascontiguousarray(_crop(rng, photos[labels[-1]], 200)), (width, height))
        samples.append((np.where(mask[..., None] > 0, fill, image), mask.astype(np.int32), [1]))
    _composed(folder, ["horse"], samples, labels)


def _blobs(folder: Path, scale: float) -> None:
    """One or two star-shaped blobs filled with one of two photos' textures on large crops of other photos,
    440-600 px: the large-image tuning set of the composed tasks. The class is the fill's photo."""
    photos = _photos()
    fills = ["clock", "brick"]
    backgrounds = ["grass", "gravel", "page", "moon", "text", "cell"]
    rng = np.random.default_rng(29)
    samples = []
    for _ in range(_count(200, scale)):
        image = _background(rng, photos, backgrounds, (440, 601), (200, 400))
        instances, classes = np.zeros(image.shape[:2], np.int32), []
        for _ in range(int(rng.integers(1, 3))):
            label = int(rng.integers(0, len(fills)))
            inside = _star_mask(rng, image.shape[:2], (0.2, 0.5), corners=(5, 10), radius=(0.5, 1.0))
            image = _fill(rng, image, inside, photos[fills[label]], 200)
            classes.append(label + 1)
            instances[inside] = len(classes)
        samples.append((image, instances, classes))
    _composed(folder, fills, samples)


def _fills(folder: Path, scale: float) -> None:
    """One star-shaped object on photo crops at 240-320 px, filled with one of four other photos' textures; the
    image label is the fill (4 classes): the tuning set of the multi-task classification head, whose label is a
    property of the object that detection and segmentation must ignore (the object is one class to them)."""
    photos = _photos()
    fills = ["grass", "gravel", "text", "cell"]
    backgrounds = ["camera", "moon", "coins", "china", "flower", "hubble_deep_field"]
    rng = np.random.default_rng(31)
    samples, labels = [], []
    for _ in range(_count(300, scale)):
        image = _background(rng, photos, backgrounds, (240, 321), (150, 300))
        inside = _star_mask(rng, image.shape[:2], (0.4, 0.8), corners=(6, 12), radius=(0.7, 1.0))
        labels.append(str(rng.choice(fills)))
        image = _fill(rng, image, inside, photos[labels[-1]], 200)
        samples.append((image, inside.astype(np.int32), [1]))
    _composed(folder, ["object"], samples, labels)


COMPOSED = ("segment", "detect", "multitask")
SETS: dict[str, BenchmarkSet] = {
    s.name: s
    for s in (
        BenchmarkSet("textures", ("classify",), "tune", "8 photos' patches, 30-67 px, 640 train", _textures),
        BenchmarkSet("tiny", ("classify",), "tune", "4 photos' patches, 22-28 px, 160 train", _tiny),
        BenchmarkSet("blobs", COMPOSED, "tune", "1-2 blobs of 2 photos' textures on photos, 440-600 px", _blobs),
        BenchmarkSet(
            "fills",
            COMPOSED,
            "tune",
            "an object on photos (1 class; label: its fill, 4), 240-320 px, 240 train",
            _fills,
        ),
        BenchmarkSet("faces", ("classify",), "report", "LFW faces vs other, 25 px gray, 2 classes, 150 train", _faces),
        BenchmarkSet("photos20", ("classify",), "report", "20 photos' patches, 48-128 px, 2,200 train", _photos20),
        BenchmarkSet("scenes", ("classify",), "report", "6 gray photos' crops, 512-640 px, 300 train", _scenes),
        BenchmarkSet(
            "coins", COMPOSED, "report", "coins (1 class; label: how many, 3), 96-192 px gray, 160 train", _coins
        ),
        BenchmarkSet(
            "pasted",
            COMPOSED,
            "report",
            "5 photos' cut-outs on textures (label: the largest), 192 px, 400 train",
            _pasted,
        ),
        BenchmarkSet(
            "horses",
            COMPOSED,
            "report",
            "a horse on photos (1 class; label: its fill, 4), 400-560 px, 160 train",
            _horses,
        ),
    )
}


def benchmark_set(name: str, *, scale: float = 1.0, root: Path | None = None) -> Path:
    """The folder of benchmark set ``name`` (built on first use); ``scale`` < 1 gives a smaller copy."""
    spec = SETS[name]
    root = root or cache_root()
    target = root / f"bench-{name}-{VERSION}" if scale == 1.0 else root / f"bench-{name}-{VERSION}-x{scale:g}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    spec.build(staging, scale)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
