"""Semantic segmentation data: Pascal VOC's layout, a generic images/ + masks/ layout, COCO's and YOLO's polygons
(drawn as masks), colour-coded masks, and the own layouts of ADE20K, Cityscapes, BDD100K, Oxford-IIIT Pet, Mapillary
Vistas and COCO-Stuff (:mod:`tasks.data.public_sets`).

Masks hold one class index per pixel (palette or single-channel PNGs); 255 is void and is
ignored by the losses and the metrics. Problems a reader can see without decoding pixels
(a missing mask, an RGB mask, a mask whose size differs from its image) stop the run with
one line naming the file. Pixel values outside the classes are only seen when a mask is
decoded, so such a mask is skipped with a warning and counted, like an unreadable image.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import Dataset

from tasks.data import holdout
from tasks.data.coco_masks import coco_semantic_masks, has_coco_polygons
from tasks.data.colour_masks import find_colour_map, indexed_samples, read_colour_map
from tasks.data.folders import val_or_stand_in
from tasks.data.images import READ_ERRORS, DecodedCache, is_image_file, warn_unreadable
from tasks.data.images import image_size as shown_size
from tasks.data.labelme import has_split as labelme_has_split
from tasks.data.labelme import labelme_segmentation
from tasks.data.public_sets import has_split as public_has_split
from tasks.data.public_sets import public_set, read_public_split
from tasks.data.transforms import normalize_batch
from tasks.data.voc import read_split_file
from tasks.data.yolo import is_yolo_root, yolo_has_split
from tasks.data.yolo_masks import yolo_segmentation
from tasks.errors import UserError
from tasks.io import read_text

IGNORE_INDEX = 255
VOC_SEGMENTATION_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
MASK_MODES = ("P", "L", "I", "I;16")


@dataclass(frozen=True)
class SegmentationSample:
    image_id: str
    image: Path
    mask: Path | None  # None for images predicted without ground truth
    # the class of each of the mask file's 256 values (255 void), applied as it is read, where the file's values are
    # a dataset's own ids (Mapillary Vistas'); None where they are the classes
    values: tuple[int, ...] | None = None


@dataclass
class SegmentationData:
    samples: list[SegmentationSample]
    class_names: list[str]
    source: str


VOC_MASK_FOLDERS = ("SegmentationClass", "SegmentationClassAug")  # VOC's own, then the SBD-augmented set's


def is_voc_segmentation(root: Path) -> bool:
    return any((root / f).is_dir() for f in VOC_MASK_FOLDERS) and (root / "ImageSets" / "Segmentation").is_dir()


def read_voc_segmentation(root: Path, split: str) -> list[SegmentationSample]:
    """``ImageSets/Segmentation/<split>.txt`` ids with ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png``,
    else ``SegmentationClassAug/<id>.png``: the 10,582-image "trainaug" set's masks (SBD's, as PNGs of class
    indices), which train with ``--set data.train_split=trainaug`` and a ``trainaug.txt`` list."""
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise UserError(f"split file {listing} does not exist")
    ids = read_split_file(listing)
    samples = []
    for image_id in ids:
        image = _find_image(root / "JPEGImages", image_id)
        if image is None:
            raise UserError(f"image {root / 'JPEGImages' / image_id}.jpg (listed in {listing}) does not exist")
        masks = [root / folder / f"{image_id}.png" for folder in VOC_MASK_FOLDERS]
        mask = next((m for m in masks if m.is_file()), masks[0])  # a missing mask is named by the reader's check
        samples.append(SegmentationSample(image_id, image, mask))
    return samples


def mask_folder_layout(root: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, masks) folders of ``split``: ``images/<split>`` + ``masks/<split>``,
    ``<split>/images`` + ``<split>/masks``, or COCO-style images in ``<split>/`` beside ``masks/<split>``."""
    for images, masks in (
        (root / "images" / split, root / "masks" / split),
        (root / split / "images", root / split / "masks"),
        (root / split, root / "masks" / split),
    ):
        if images.is_dir() and masks.is_dir():
            return images, masks
    return None


def read_mask_folders(root: Path, split: str) -> list[SegmentationSample]:
    """Every image of the split's image folder (sub-folders included) with the mask of the same
    relative path and stem, as PNG."""
    layout = mask_folder_layout(root, split)
    if layout is None:
        raise UserError(
            f"no split {split!r} under {root}: expected images/{split}/ with masks/{split}/, "
            f"or {split}/images/ with {split}/masks/, or {split}/ with masks/{split}/, "
            f"or a COCO annotations/instances_{split}.json with polygons"
        )
    return pair_images_and_masks(*layout)


def pair_images_and_masks(images: Path, masks: Path) -> list[SegmentationSample]:
    samples = []
    for image in sorted(p for p in images.rglob("*") if p.is_file() and is_image_file(p)):
        relative = image.relative_to(images).with_suffix("")
        samples.append(SegmentationSample(relative.as_posix(), image, masks / relative.with_suffix(".png")))
    return samples


def check_masks(samples: Sequence[SegmentationSample]) -> None:
    """What the file headers show: each mask exists, is single-channel, and has its image's size."""
    for sample in samples:
        if sample.mask is None:
            continue
        if not sample.mask.is_file():
            raise UserError(f"mask {sample.mask} of image {sample.image} does not exist")
        try:
            with Image.open(sample.mask) as mask:
                mode, mask_size = mask.mode, mask.size
            image_size = shown_size(sample.image)  # as the image is read: turned by its EXIF orientation
        except READ_ERRORS:
            continue  # unreadable files are skipped and counted when they are loaded
        if mode not in MASK_MODES:
            raise UserError(
                f"mask {sample.mask} is a {mode} image; expected a palette or single-channel PNG of class indices"
            )
        if mask_size != image_size:
            raise UserError(
                f"mask {sample.mask} is {mask_size[0]}x{mask_size[1]} but its image {sample.image} "
                f"is {image_size[0]}x{image_size[1]}"
            )


def scan_num_classes(samples: Sequence[SegmentationSample]) -> int:
    """One more than the largest class index in the masks (void excluded)."""
    largest = 0
    for sample in samples:
        if sample.mask is None:
            continue
        try:
            values = np.unique(load_mask(sample.mask))
        except READ_ERRORS:
            continue
        values = values[values != IGNORE_INDEX]
        if values.size:
            largest = max(largest, int(values.max()))
    return largest + 1


def invalid_values(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """The distinct values of ``mask`` that are neither a class (0..num_classes-1) nor void."""
    return np.unique(mask[((mask >= num_classes) & (mask != IGNORE_INDEX)) | (mask < 0)])


def read_mask(path: Path) -> np.ndarray:
    """A mask file's values: a palette or greyscale PNG's as a writable uint8 array (a palette's indices, with no
    lookup), which most masks are, read and looked up without an int64 copy; any other mode's through
    :func:`load_mask`."""
    with Image.open(path) as mask:
        if mask.mode in ("L", "P"):
            return np.array(mask)
    return load_mask(path)


def load_mask(path: Path) -> np.ndarray:
    """(H, W) int64 class indices from a palette or single-channel PNG, with no palette lookup."""
    with Image.open(path) as mask:
        mask.load()
        return np.asarray(mask).astype(np.int64)


def load_segmentation(
    root: Path,
    split: str,
    *,
    classes: Sequence[str] | None,
    fmt: str = "auto",
    val_fraction: float = holdout.DEFAULT_FRACTION,
) -> SegmentationData:
    """One split of any layout (``fmt`` ``"voc"``, ``"masks"``, ``"coco"`` (masks rasterised from the
    instances file's polygons, see :mod:`tasks.data.coco_masks`), ``"yolo"`` (a data YAML or YOLO folder, masks
    rasterised from its polygon lines, see :mod:`tasks.data.yolo_masks`), or ``"auto"`` to detect it), its
    masks checked, with its class names.

    Class names are the given list; else VOC's 21 for the VOC layout; else the lines of
    ``classes.txt`` in the root; else ``"0"``..``"K-1"`` with K read from the masks. Where ``split`` is ``val``
    and the root has none, its ``valid`` or ``test`` split stands in, with a note; where it has none of these,
    the default splits ``train`` and ``val`` are held out of its train split, or of ``images/`` with ``masks/``
    (or YOLO's ``labels/``) without split folders: ``val_fraction`` of the images to val (:mod:`tasks.data.holdout`).
    """
    voc = is_voc_segmentation(root)
    if fmt == "voc" and not voc:
        raise UserError(
            f"--format voc: {root} has no SegmentationClass/ (or SegmentationClassAug/) and ImageSets/Segmentation/"
        )

    def present(name: str) -> bool:
        return _has_split(root, name, fmt, voc=voc)

    trains = ("train", *holdout.other_names("train"), holdout.CVAT_SUBSET)
    whole = holdout.source_split(split, present, trains)
    if whole is None:
        if root.is_dir() or (fmt == "auto" and public_set(root) is not None):  # a data YAML names its splits
            split = val_or_stand_in(root, split, present)
        return _read_split(root, split, classes, fmt, voc=voc)
    data = _read_split(root, whole, classes, fmt, voc=voc)
    base = root.parent if root.is_file() else root
    rest, held = holdout.parts(data.samples, [holdout.key_of(s.image, base) for s in data.samples], val_fraction)
    origin = data.source.removesuffix(f" ({whole})")
    if split == "val":
        holdout.note(root, val_fraction, len(held), len(data.samples))
        return SegmentationData(held, data.class_names, f"{origin} ({val_fraction:.0%} held out)")
    return SegmentationData(rest, data.class_names, f"{origin} (the rest)")


def _read_split(root: Path, split: str, classes: Sequence[str] | None, fmt: str, *, voc: bool) -> SegmentationData:
    public = public_set(root) if fmt == "auto" else None
    masks = public is None and mask_folder_layout(root, split) is not None
    coco = fmt == "coco" or (fmt == "auto" and not (public or masks) and has_coco_polygons(root, split))
    yolo = fmt == "yolo" or (
        fmt == "auto" and not (public or voc or masks or coco) and (root.is_file() or is_yolo_root(root))
    )
    labelme = fmt == "labelme" or (
        fmt == "auto" and not (public or masks or coco or yolo) and labelme_has_split(root, split)
    )
    colour_map = find_colour_map(root) if root.is_dir() and not (public or yolo or coco or labelme) else None
    if public is not None:  # a public set's own layout
        samples, names = read_public_split(root, public, split)
        names = list(classes) if classes is not None else names
    elif labelme:
        samples, names = labelme_segmentation(root, split, classes)
    elif yolo:
        found, names, source = yolo_segmentation(root, split, classes=classes)
        samples = [SegmentationSample(image_id, image, mask) for image_id, image, mask in found]
    elif voc and fmt in ("auto", "voc"):
        samples = read_voc_segmentation(root, split)
        names = list(classes) if classes is not None else list(VOC_SEGMENTATION_CLASSES)
    elif coco:
        images, masks, found = coco_semantic_masks(root, split)
        samples = pair_images_and_masks(images, masks)
        names = list(classes) if classes is not None else found
    else:
        samples = read_mask_folders(root, split)
        listing = root / "classes.txt"
        if colour_map is not None:
            names = []  # the colour map's, below
        elif classes is not None:
            names = list(classes)
        elif listing.is_file():
            names = [line.strip() for line in read_text(listing, kind="class list").splitlines() if line.strip()]
        else:
            names = [str(i) for i in range(scan_num_classes(samples))]
    if not samples:
        raise UserError(f"split {split!r} of {root} has no images")
    if colour_map is not None:  # CVAT's segmentation masks, CamVid's class_dict.csv: classes are colours
        names, colours = read_colour_map(colour_map)
        if classes is not None and list(classes) != names:
            print(
                f"warning: the classes of colour map {colour_map} are used; the configured list {list(classes)} differs"
            )
        print(f"classes (colour map {colour_map}): {', '.join(names)}")
        samples = indexed_samples(samples, colour_map, colours)
    if not 2 <= len(names) <= IGNORE_INDEX:
        raise UserError(
            f"{root} defines {len(names)} class(es); segmentation needs 2 to 255 (background included; 255 is void)"
        )
    check_masks(samples)
    return SegmentationData(samples, names, source if yolo else f"{root} ({split})")


def _has_split(root: Path, split: str, fmt: str, *, voc: bool) -> bool:
    """Whether ``split`` is in ``root`` in a layout that ``fmt`` reads; :data:`holdout.WHOLE`: whether the root is
    one split, ``images/`` beside ``masks/`` or YOLO's ``labels/``."""
    if root.is_file():  # a data YAML, or a Mapillary Vistas config naming its label set
        public = public_set(root) if fmt == "auto" else None
        return public_has_split(root, public, split) if public is not None else yolo_has_split(root, split)
    if fmt in ("auto", "labelme") and labelme_has_split(root, split):
        return True
    if split == holdout.WHOLE:
        folders = (root / "images").is_dir() and ((root / "masks").is_dir() or (root / "labels").is_dir())
        return folders or (fmt in ("auto", "coco") and has_coco_polygons(root, split))
    if voc and fmt in ("auto", "voc"):
        return (root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()
    if fmt == "auto" and (public := public_set(root)) is not None:
        return public_has_split(root, public, split)
    if fmt == "yolo":
        return yolo_has_split(root, split)
    masks = mask_folder_layout(root, split) is not None
    if fmt == "masks":
        return masks
    return masks or has_coco_polygons(root, split) or (fmt == "auto" and yolo_has_split(root, split))


def _find_image(folder: Path, image_id: str) -> Path | None:
    for suffix in (".jpg", ".jpeg", ".png", ".JPG"):
        if (path := folder / f"{image_id}{suffix}").is_file():
            return path
    return None


def checked_mask(
    decoded: DecodedCache,
    path: Path,
    num_classes: int,
    *,
    shape: tuple[int, int] | None = None,
    values: tuple[int, ...] | None = None,
) -> np.ndarray | str:
    """The mask at ``path`` as a uint8 array of its own memory, read (its values looked up in ``values`` where
    given: :attr:`SegmentationSample.values`) and checked on its first use and kept in ``decoded`` from then on; or,
    where its values are not all classes or void (or its size is not ``shape``), what is wrong with it, in words.
    Such a mask is not kept, so each use reads and reports it again. Read errors propagate, for the caller to skip
    and count."""
    mask = decoded.get(path)
    if mask is None:
        mask = read_mask(path)
        if values is not None:
            if mask.dtype == np.uint8 and len(values) == 256 and max(values) <= 255:  # every byte has an entry
                import cv2

                mask = cv2.LUT(mask, np.asarray(values, np.uint8))  # OpenCV's table lookup: 0.3 ms a 2048 x 1024
            elif mask.min(initial=0) < 0 or mask.max(initial=0) >= len(values):
                return f"values outside 0..{len(values) - 1}, the ids it is read by"
            else:
                mask = np.asarray(values, np.int64)[mask]
        if shape is not None and mask.shape != shape:
            return f"{mask.shape[1]}x{mask.shape[0]} px where its image is {shape[1]}x{shape[0]} px"
        bad = invalid_values(mask, num_classes)
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:5])
            return f"values {shown} are neither a class (0..{num_classes - 1}) nor void (255)"
        mask = mask.astype(np.uint8, copy=False)  # every value is now below 256; OpenCV's warps need a small dtype
        decoded.keep(path, mask)
    return mask if mask.flags.writeable else mask.copy()  # a kept array: the transforms may hand it on unchanged


class SegmentationDataset(Dataset[dict[str, Any] | None]):
    """Image and mask through a mask-aware transform; None (skipped and counted) for an unreadable
    image or mask, or a mask with values outside the classes."""

    def __init__(self, data: SegmentationData, transform: Callable[..., Any]) -> None:
        self.data = data
        self.transform = transform
        self.num_classes = len(data.class_names)
        self.decoded = DecodedCache()  # nothing kept until the engine gives it a budget (train.cache_mb)

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.data.samples[index]
        try:
            image = self.decoded.load(sample.image)
        except READ_ERRORS as error:
            warn_unreadable(sample.image, error)
            return None
        mask = None
        if sample.mask is not None:
            mask = usable_mask(self.decoded, sample, self.num_classes)
            if mask is None:
                return None
        height, width = image.shape[:2]
        tensor, target = self.transform(image, mask)
        return {"image": tensor, "mask": target, "index": index, "size": (height, width)}


def usable_mask(decoded: DecodedCache, sample: SegmentationSample, num_classes: int) -> np.ndarray | None:
    """``sample``'s mask as :func:`checked_mask` reads it, or None where it cannot be read or its values are no
    classes: the file named in a warning, for the caller to skip and count."""
    assert sample.mask is not None
    try:
        mask = checked_mask(decoded, sample.mask, num_classes, values=sample.values)
    except READ_ERRORS as error:
        warn_unreadable(sample.mask, error)
        return None
    if isinstance(mask, str):
        print(f"warning: skipping {sample.mask}: {mask}", file=sys.stderr, flush=True)
        return None
    return mask


def padded_shape(sizes: Sequence[tuple[int, int]], multiple: int) -> tuple[int, int]:
    """The batch's (H, W): the largest height and width among ``sizes``, each rounded up to ``multiple``."""
    return (-(-max(h for h, _ in sizes) // multiple) * multiple, -(-max(w for _, w in sizes) // multiple) * multiple)


def stack_padded(
    tensors: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], shape: tuple[int, int], value: float = 0
) -> torch.Tensor:
    """``tensors`` (..., H, W) of ``sizes`` padded bottom and right with ``value`` to ``shape``, where they need it,
    and stacked."""
    height, width = shape
    return torch.stack(
        [t if (h, w) == shape else F.pad(t, (0, width - w, 0, height - h), value=value) for t, (h, w) in
         zip(tensors, sizes)]
    )  # fmt: skip


def normalized_padded(
    images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], shape: tuple[int, int]
) -> torch.Tensor:
    """Images stacked to ``shape``: uint8 ones (the training pipelines') ImageNet-normalised (:func:`normalize_batch`),
    the batch at once where nothing needs padding, and each before its padding, which is zero in normalised values."""
    if all(size == shape for size in sizes):
        return normalize_batch(torch.stack(list(images)))
    return stack_padded([normalize_batch(image[None])[0] for image in images], sizes, shape)


def collate_segmentation(items: list[dict[str, Any] | None], *, multiple: int = 32) -> dict[str, Any]:
    """Images padded (bottom and right) to a common size, a multiple of ``multiple``; masks padded
    with void. ``sizes`` keeps each image's own (H, W) before padding, ``skipped`` the unreadable count.
    uint8 images (the training pipeline's) are ImageNet-normalised here (:func:`normalized_padded`)."""
    good = [item for item in items if item is not None]
    out: dict[str, Any] = {"batch_size": len(good), "skipped": len(items) - len(good)}
    if not good:
        return {**out, "images": torch.zeros(0, 3, multiple, multiple), "masks": None, "indices": [], "sizes": []}
    sizes = [(int(item["image"].shape[-2]), int(item["image"].shape[-1])) for item in good]
    shape = padded_shape(sizes, multiple)
    images = normalized_padded([item["image"] for item in good], sizes, shape)
    masks = None
    if all(item["mask"] is not None for item in good):
        masks = stack_padded([item["mask"] for item in good], sizes, shape, IGNORE_INDEX)
    return {
        **out,
        "images": images,  # (N, 3, H, W) float32
        "masks": masks,  # (N, H, W) int64
        "indices": [item["index"] for item in good],
        "sizes": sizes,
    }
