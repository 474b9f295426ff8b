"""The layouts of six public segmentation sets, read as they are downloaded.

**ADE20K** (the scene-parsing release, ``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` with
``annotations/{training,validation}/*.png`` of the same stem, and ``objectInfo150.txt`` (or the ``.csv`` of the
benchmark's repository) naming the 150 classes. A mask's 0 is "other objects", which the benchmark does not score:
it becomes void (255) and class k becomes k - 1, as mmsegmentation's ``reduce_zero_label`` does.

**Cityscapes**: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` where cityscapesscripts' ``createTrainIdLabelImgs`` wrote
it, else ``<name>_gtFine_labelIds.png``, whose 34 label ids become the benchmark's 19 train ids (the others void),
by the table of cityscapesscripts' ``labels.py``.

**BDD100K**: the drivable-area masks ``labels/drivable/masks/<split>/<name>.png`` of the images
``images/100k/<split>/<name>.jpg`` (the 2020 release: 0 direct, 1 alternative, 2 background; here background becomes
class 0, then direct and alternative), else, where a split has none, the semantic masks
``labels/sem_seg/masks/<split>/<name>.png`` of ``images/10k/<split>/<name>.jpg`` (Cityscapes' 19 train ids, 255
void), read as they are. The drivable areas share their images with the detection labels (:mod:`tasks.data.bdd100k`),
so one root trains the two tasks together. ``--data bdd100k/labels/lane`` (or ``drivable``, ``sem_seg``) picks that
label set: the lane markings ``labels/lane/masks/<split>/<name>.png`` of ``images/100k/``, whose bytes hold the
direction, the style, a background bit (8) and the category (the low three bits, in the bdd100k toolkit's order):
background is class 0 and the eight categories 1..8, as the toolkit's lane dataset trains them. A root with lane
masks alone reads them without naming the folder.

**Oxford-IIIT Pet** (``oxford-iiit-pet/``, as torchvision downloads it): ``annotations/trimaps/<image>.png`` of
``images/<image>.jpg``, the images of ``annotations/trainval.txt`` (``train``) and ``test.txt``. A trimap's 1 is the
pet, 2 the background and 3 the uncertain border: the classes are background 0 and pet 1, the border void. The
images are those the breed lists name (:mod:`tasks.data.listed_sets`), so one root trains both tasks together.

**Mapillary Vistas**: ``{training,validation}/images/<id>.jpg`` with the palette PNGs of label ids of the 2.0
release's ``v1.2/labels/`` (``config_v1.2.json``: the 65 classes most results report), else its ``v2.0/labels/``
(``config_v2.0.json``), else the 1.0/1.1 releases' ``labels/`` (``config.json``). The classes are the config's
labels that the benchmark scores (``evaluate``), in id order; an unscored one ("Unlabeled") is void. The masks are
looked up through that table as they load (:attr:`tasks.data.segmentation.SegmentationSample.values`), not
converted first.

**COCO-Stuff** (164k): ``images/{train2017,val2017}/<id>.jpg`` with ``annotations/{train2017,val2017}/<id>.png``,
the stuffthingmaps (each pixel a COCO category id minus one, 0..181, 255 unlabeled): the 171 classes its masks use,
in id order, as mmsegmentation's ``COCOStuffDataset`` has them; the 11 unused ids are void. The masks are looked up
as they load; mmsegmentation's converted ``<id>_labelTrainIds.png`` beside them are read as they are.

For detection, Cityscapes' boxes come from ``gtFine/<split>/<city>/<name>_gtFine_polygons.json``
(:func:`read_cityscapes_detection`): its eight instance classes (person, rider, car, truck, bus, train, motorcycle,
bicycle, the benchmark's), each box around the object's visible pixels. The polygons are drawn in the file's order,
later ones in front, as cityscapesscripts' ``json2instanceImg`` draws the ``instanceIds`` masks (every object
but the deleted ones and license plates occludes), so a box is the one around the object's pixels in that mask. A
``<class>group`` polygon (a crowd that was not split into objects) is a crowd region of its class, as the benchmark's
instance evaluation ignores it; caravans and trailers, which it does not score, are left out.

Every set's masks whose values are not yet the classes (ADE20K's, Cityscapes' label ids, BDD100K's drivable areas, the
Pets' trimaps, Mapillary's and COCO-Stuff's) are looked up through a table of their 256 values as they load
(:attr:`tasks.data.segmentation.SegmentationSample.values`); none is converted into the cache first.
``train`` and ``val`` find ADE20K's ``training`` and ``validation`` (:func:`tasks.data.holdout.other_names`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tasks.data import listed_sets
from tasks.data.embedded import cache_root
from tasks.data.images import is_image_file
from tasks.errors import UserError
from tasks.io import atomic_write, read_text

if TYPE_CHECKING:
    from tasks.data.detection import DetectionData
    from tasks.data.segmentation import SegmentationSample

ADE_CLASS_FILES = ("objectInfo150.txt", "objectInfo150.csv")
# cityscapesscripts' labels.py: the label id of each of the 19 classes the benchmark scores, in train-id order
CITYSCAPES_CLASSES = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"), (19, "traffic light"),
    (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"), (24, "person"), (25, "rider"), (26, "car"),
    (27, "truck"), (28, "bus"), (31, "train"), (32, "motorcycle"), (33, "bicycle"),
)  # fmt: skip
CITYSCAPES_IMAGE, CITYSCAPES_TRAIN_IDS, CITYSCAPES_LABEL_IDS = (
    "_leftImg8bit",
    "_gtFine_labelTrainIds",
    "_gtFine_labelIds",
)
CITYSCAPES_POLYGONS = "_gtFine_polygons.json"
CITYSCAPES_INSTANCES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_UNDRAWN = ("license plate",)  # labels.py's id -1: not drawn into the instance masks
BDD_MASKS = {"drivable": "100k", "sem_seg": "10k", "lane": "100k"}  # mask tasks, their images, in the order looked for
BDD_LANES = (  # background, then the lane markings' categories 0..7 (bdd100k.label.label's lane_marks)
    "background", "crosswalk", "double other", "double white", "double yellow", "road curb", "single other",
    "single white", "single yellow",
)  # fmt: skip
BDD_DRIVABLE = ("background", "direct", "alternative")  # the masks' 2, 0 and 1


def are_bdd_lanes(class_names: Sequence[str]) -> bool:
    """Whether ``class_names`` are BDD100K's lane markings (background, then the eight categories in the toolkit's
    order): the runners then also score the toolkit's lane F-scores (:mod:`tasks.metrics.lanes`)."""
    return list(class_names) == list(BDD_LANES)


# Mapillary Vistas' label sets: the 2.0 release's v1.2 (the 65 classes most results report) and v2.0, each with its
# config, then the 1.0/1.1 releases' config.json with <split>/labels/
MAPILLARY_VERSIONS = (
    ("config_v1.2.json", "v1.2/labels"),
    ("config_v2.0.json", "v2.0/labels"),
    ("config.json", "labels"),
)
# COCO-Stuff 164k's 171 classes (the 80 things and 91 stuff classes that its masks use), in id order; the masks'
# values are COCO's category ids minus one, 0..181, of which these 11 label nothing (COCO's unused thing ids)
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner",
    "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
COCO_STUFF_SPLITS = ("train2017", "val2017")
COCO_STUFF_TRAIN_IDS = "_labelTrainIds"  # mmsegmentation's converted masks, already 0..170
VERSION = 1  # in the cache keys


def public_set(root: Path) -> str | None:
    """``"ade20k"``, ``"cityscapes"``, ``"bdd100k"``, ``"pets"``, ``"mapillary"``, ``"cocostuff"`` or None, from the
    layout of ``root``."""
    if _mapillary_version(root) is not None:
        return "mapillary"
    if not root.is_dir():
        return None
    if any((root / "annotations" / s).is_dir() and (root / "images" / s).is_dir() for s in COCO_STUFF_SPLITS):
        return "cocostuff"
    if (root / "images").is_dir() and (root / "annotations").is_dir() and _ade_class_file(root) is not None:
        return "ade20k"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    folder, tasks = _bdd_root(root)
    if any((folder / "labels" / task / "masks").is_dir() for task in tasks):
        return "bdd100k"
    if _pets_folder(root) is not None:
        return "pets"
    return None


def _pets_folder(root: Path) -> Path | None:
    return next(
        (
            f
            for f in (root, root / listed_sets.FOLDERS["pets"])
            if (f / "annotations" / "trimaps").is_dir() and (f / "images").is_dir()
        ),
        None,
    )


def _mapillary_version(root: Path) -> tuple[Path, Path, str] | None:
    """Mapillary Vistas' folder, config file and labels folder under each split, where ``root`` is its folder (the
    first of :data:`MAPILLARY_VERSIONS` that a split has) or one of its config files (that label set:
    ``--data mapillary-vistas/config_v2.0.json`` reads v2.0 where v1.2 is there too)."""
    folder = root.parent if root.is_file() else root
    for config, labels in MAPILLARY_VERSIONS:
        if root.is_file() and root.name != config:
            continue
        if (folder / config).is_file() and any((folder / s / labels).is_dir() for s in ("training", "validation")):
            if config == "config.json" and not _has_labels_list(folder / config):  # a name other tools use too
                continue
            return folder, folder / config, labels
    return None


def _has_labels_list(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("labels"), list)
    except (OSError, ValueError, AttributeError):
        return False


def has_split(root: Path, kind: str, split: str) -> bool:
    if kind == "mapillary":
        found = _mapillary_version(root)
        return found is not None and (found[0] / split / "images").is_dir() and (found[0] / split / found[2]).is_dir()
    if kind in ("ade20k", "cocostuff"):  # the same folders, told apart by ADE20K's class list
        return (root / "images" / split).is_dir() and (root / "annotations" / split).is_dir()
    if kind == "bdd100k":
        return _bdd_masks(root, split) is not None
    if kind == "pets":
        folder, lists = _pets_folder(root), listed_sets.LISTS["pets"]
        return folder is not None and split in lists and (folder / lists[split]).is_file()
    return (root / "leftImg8bit" / split).is_dir() and (root / "gtFine" / split).is_dir()


def _bdd_root(root: Path) -> tuple[Path, tuple[str, ...]]:
    """BDD100K's folder and the mask tasks to look for: the one ``--data`` names (``bdd100k/labels/lane``), else
    every one, in :data:`BDD_MASKS`' order."""
    if root.name in BDD_MASKS and root.parent.name == "labels" and (root.parent.parent / "images").is_dir():
        return root.parent.parent, (root.name,)
    return root, tuple(BDD_MASKS)


def _bdd_masks(root: Path, split: str) -> tuple[Path, Path, str] | None:
    """BDD100K's (images, masks, task) folders of ``split``: the named task's, else the drivable areas', the
    semantic masks' or the lane markings', the first that the split has."""
    folder, tasks = _bdd_root(root)
    for task in tasks:
        masks, images = folder / "labels" / task / "masks" / split, folder / "images" / BDD_MASKS[task] / split
        if masks.is_dir() and images.is_dir():
            return images, masks, task
    return None


def read_public_split(root: Path, kind: str, split: str) -> tuple[list[SegmentationSample], list[str]]:
    """The samples of ``split``, their masks as class indices with 255 void, and the class names."""
    if not has_split(root, kind, split):
        folders = {
            "ade20k": "images/ and annotations/",
            "cityscapes": "leftImg8bit/ and gtFine/",
            "bdd100k": "images/100k/ with labels/drivable/masks/ or labels/lane/masks/, or images/10k/ with "
            "labels/sem_seg/masks/",
            "pets": "annotations/ (trainval.txt for train, test.txt for test)",
            "mapillary": "images/ and the labels folder of its config",
            "cocostuff": "images/ and annotations/",
        }[kind]
        raise UserError(f"--data {root} ({kind}) has no split {split!r}: expected {split}/ under {folders}")
    if kind == "bdd100k":
        return _bdd100k(root, split)
    if kind == "pets":
        return _pets(root, split)
    if kind == "mapillary":
        return _mapillary(root, split)
    if kind == "cocostuff":
        return _coco_stuff(root, split)
    return _ade20k(root, split) if kind == "ade20k" else _cityscapes(root, split)


def _ade_class_file(root: Path) -> Path | None:
    return next((root / name for name in ADE_CLASS_FILES if (root / name).is_file()), None)


def ade_class_names(path: Path) -> list[str]:
    """The class names of ``objectInfo150.txt`` (tab-separated ``Idx Ratio Train Val Name``) or of its ``.csv``
    (``Idx,Ratio,Train,Val,Stuff,Name``), in index order: each name's first synonym (``building, edifice`` or
    ``building;edifice`` is ``building``)."""
    is_csv = path.suffix == ".csv"
    rows: dict[int, str] = {}
    for number, line in enumerate(read_text(path, kind="class list").splitlines(), start=1):
        if not line.strip() or number == 1:  # the header
            continue
        fields = _csv_fields(line) if is_csv else line.split("\t")
        try:
            index = int(fields[0])
        except ValueError:
            index = 0
        name = fields[-1].strip().strip('"').replace(";", ",").split(",")[0].strip() if len(fields) > 1 else ""
        if index < 1 or not name or index in rows:
            raise UserError(f"class list {path}, line {number}: expected a new index from 1 and a name, got {line!r}")
        rows[index] = name
    if sorted(rows) != list(range(1, len(rows) + 1)) or len(rows) < 2:
        raise UserError(f"class list {path}: expected indices 1..K (K ≥ 2) with no gaps, got {len(rows)} rows")
    return [rows[i] for i in range(1, len(rows) + 1)]


def _csv_fields(line: str) -> list[str]:
    import csv

    return next(csv.reader([line]))


def _ade20k(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    from tasks.data.segmentation import SegmentationSample

    class_file = _ade_class_file(root)
    assert class_file is not None
    names = ade_class_names(class_file)
    images, masks = root / "images" / split, root / "annotations" / split
    samples = [
        SegmentationSample(
            p.relative_to(images).with_suffix("").as_posix(), p, (masks / p.relative_to(images)).with_suffix(".png")
        )
        for p in sorted(p for p in images.rglob("*") if p.is_file() and is_image_file(p))
    ]
    shifted = {k + 1: k for k in range(len(names))}  # 0 ("other objects") and any value past the classes: void
    return _looked_up(samples, shifted), names


def _cityscapes(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    from tasks.data.segmentation import SegmentationSample

    images, masks = root / "leftImg8bit" / split, root / "gtFine" / split
    ready, label_ids = [], []
    for image in sorted(images.rglob(f"*{CITYSCAPES_IMAGE}.png")):
        relative = image.relative_to(images)
        stem = relative.name.removesuffix(f"{CITYSCAPES_IMAGE}.png")
        image_id = (relative.parent / stem).as_posix()
        train_ids = masks / relative.parent / f"{stem}{CITYSCAPES_TRAIN_IDS}.png"
        if train_ids.is_file():
            ready.append(SegmentationSample(image_id, image, train_ids))
        else:  # a missing mask is named by the reader's check
            label_ids.append(
                SegmentationSample(image_id, image, masks / relative.parent / f"{stem}{CITYSCAPES_LABEL_IDS}.png")
            )
    train_ids = {label_id: train_id for train_id, (label_id, _) in enumerate(CITYSCAPES_CLASSES)}
    samples = sorted(ready + _looked_up(label_ids, train_ids), key=lambda s: s.image_id)
    return samples, [name for _, name in CITYSCAPES_CLASSES]


def _bdd100k(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    from tasks.data.segmentation import SegmentationSample

    found = _bdd_masks(root, split)
    assert found is not None
    images, masks, task = found
    samples = [  # a mask without its image is skipped and counted by the loader, as an unreadable image
        SegmentationSample(mask.stem, images / f"{mask.stem}.jpg", mask) for mask in sorted(masks.glob("*.png"))
    ]
    if task == "sem_seg":
        return samples, [name for _, name in CITYSCAPES_CLASSES]
    if task == "lane":  # the background bit (8) set: background; else the category in the low three bits, plus one
        return _looked_up(samples, {v: 0 if v & 8 else (v & 7) + 1 for v in range(256)}), list(BDD_LANES)
    drivable = {2: 0, 0: 1, 1: 2}  # background, direct, alternative
    return _looked_up(samples, drivable), list(BDD_DRIVABLE)


def _pets(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    from tasks.data.segmentation import SegmentationSample

    folder = _pets_folder(root)
    assert folder is not None
    samples = [  # a missing trimap is named by the reader's check
        SegmentationSample(name, folder / "images" / f"{name}.jpg", folder / "annotations" / "trimaps" / f"{name}.png")
        for name, _ in listed_sets.pet_list(folder / listed_sets.LISTS["pets"][split])
    ]
    trimap = {1: 1, 2: 0}  # the pet, the background; 3 (the border) and anything else void
    return _looked_up(samples, trimap), ["background", "pet"]


def mapillary_classes(config: Path) -> tuple[list[str], tuple[int, ...]]:
    """The classes of a Mapillary Vistas config (its ``labels``, in id order: each one's ``readable`` name, else its
    ``name``) that the benchmark scores (``evaluate``, true where it is missing), and the class of each of the
    masks' 256 ids: an unscored label ("Unlabeled", v2.0's void ones) and any id past the labels are void."""
    try:
        labels = json.loads(read_text(config, kind="Mapillary Vistas config"))["labels"]
        scored = [label for label in labels if label.get("evaluate", True)]
        ids = [i for i, label in enumerate(labels) if label.get("evaluate", True)]
        readable = [str(label.get("readable") or label["name"]) for label in scored]
        names = readable if len(set(readable)) == len(readable) else [str(label["name"]) for label in scored]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(
            f"Mapillary Vistas config {config}: expected JSON with a labels list of {{name, readable, evaluate}}"
        ) from None
    if len(labels) > 255:
        raise UserError(f"Mapillary Vistas config {config} has {len(labels)} labels; masks hold 0..254 and void")
    return names, _value_classes({i: k for k, i in enumerate(ids)})


def _mapillary(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    """Each ``<split>/images/<id>.jpg`` with ``<split>/<labels>/<id>.png`` (a palette PNG of label ids), read through
    the config's table (:func:`mapillary_classes`) as the masks load, not converted first: the set's 18,000
    training masks are up to 5,000 px wide."""
    from tasks.data.segmentation import SegmentationSample

    found = _mapillary_version(root)
    assert found is not None
    folder, config, labels = found
    names, values = mapillary_classes(config)
    images, masks = folder / split / "images", folder / split / labels
    samples = [
        SegmentationSample(p.stem, p, masks / f"{p.stem}.png", values)
        for p in sorted(p for p in images.iterdir() if p.is_file() and is_image_file(p))
    ]
    return samples, names


def coco_stuff_values() -> tuple[int, ...]:
    """The class of each of COCO-Stuff's mask values: the 182 ids in order, less the 11 unused ones, are classes
    0..170; the unused ids, 255 (unlabeled) and anything else are void."""
    used = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    return _value_classes({v: k for k, v in enumerate(used)})


def _coco_stuff(root: Path, split: str) -> tuple[list[SegmentationSample], list[str]]:
    """Each ``images/<split>/<id>.jpg`` with ``annotations/<split>/<id>.png`` (the stuffthingmaps, COCO's ids minus
    one), read through :func:`coco_stuff_values` as they load; or with mmsegmentation's converted
    ``<id>_labelTrainIds.png``, read as they are."""
    from tasks.data.segmentation import SegmentationSample

    images, masks = root / "images" / split, root / "annotations" / split
    values = coco_stuff_values()
    samples = []
    for image in sorted(p for p in images.iterdir() if p.is_file() and is_image_file(p)):
        converted = masks / f"{image.stem}{COCO_STUFF_TRAIN_IDS}.png"
        if converted.is_file():
            samples.append(SegmentationSample(image.stem, image, converted))
        else:  # a missing mask is named by the reader's check
            samples.append(SegmentationSample(image.stem, image, masks / f"{image.stem}.png", values))
    return samples, list(COCO_STUFF_CLASSES)


def _looked_up(samples: list[SegmentationSample], classes: dict[int, int]) -> list[SegmentationSample]:
    """``samples`` whose masks are read through ``classes`` (a mask value's class; any other value void) as they
    load (:attr:`tasks.data.segmentation.SegmentationSample.values`)."""
    values = _value_classes(classes)
    return [replace(sample, values=values) for sample in samples]


def _value_classes(classes: dict[int, int]) -> tuple[int, ...]:
    """The class of each of a mask's 256 values: ``classes[value]``, any other value void (255)."""
    values = [255] * 256
    for value, k in classes.items():
        values[value] = k
    return tuple(values)


def read_cityscapes_detection(root: Path, split: str) -> DetectionData:
    """The split's images with the boxes of their objects of :data:`CITYSCAPES_INSTANCES` (labels 1..8 in that
    order), from the polygon files; ``<class>group`` polygons are crowd regions of their class. Each file's boxes
    are kept in ``<cache>/cityscapes-boxes/``, keyed by its path, size and modification time and the image's size:
    drawing a split's polygons takes about 12 ms an image, reading them back a fraction of that."""
    from tasks.data.detection import DetectionData, FixCounts, pixel_sample, readable_size

    if not has_split(root, "cityscapes", split):
        raise UserError(
            f"--data {root} (Cityscapes) has no split {split!r}: expected {split}/ under leftImg8bit/ and gtFine/"
        )
    images, annotations = root / "leftImg8bit" / split, root / "gtFine" / split
    where = hashlib.sha1(str(annotations.resolve()).encode()).hexdigest()[:16]
    cache = cache_root() / "cityscapes-boxes" / f"{where}.json"
    try:
        kept = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        kept = {}
    kept = kept if isinstance(kept, dict) and kept.pop("version", None) == VERSION else {}
    fixes, samples, crowds, fresh = FixCounts(), [], 0, {}
    for image in sorted(images.rglob(f"*{CITYSCAPES_IMAGE}.png")):
        relative = image.relative_to(images)
        stem = relative.name.removesuffix(f"{CITYSCAPES_IMAGE}.png")
        polygons = annotations / relative.parent / f"{stem}{CITYSCAPES_POLYGONS}"
        if not polygons.is_file():
            raise UserError(f"polygon file {polygons} of image {image} does not exist")
        size = readable_size(image, fixes)
        if size is None:
            continue
        stat = polygons.stat()
        key = f"{polygons.relative_to(annotations).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}|{size[0]}x{size[1]}"
        entry = kept.get(key) or _visible_boxes(polygons, size)
        fresh[key] = entry
        boxes, labels, crowd = entry
        crowds += sum(crowd)
        image_id = (relative.parent / stem).as_posix()
        samples.append(pixel_sample(image_id, image, size, boxes, labels, fixes, crowd=crowd))
    if not samples:
        raise UserError(f"{images} holds no readable {CITYSCAPES_IMAGE}.png images")
    if fresh.keys() != kept.keys():
        with contextlib.suppress(OSError):  # a read-only cache costs the next run the drawing, nothing else
            atomic_write(cache, lambda handle: handle.write(json.dumps({"version": VERSION, **fresh}).encode()))
    if crowds:
        print(f"note: {root} ({split}): {crowds} <class>group region(s) are crowds: not trained on, ignored in scoring")
    classes = list(CITYSCAPES_INSTANCES)
    return DetectionData(samples, classes, list(range(1, len(classes) + 1)), f"{root} ({split})", fixes)


def _visible_boxes(polygons: Path, size: tuple[int, int]) -> tuple[list[list[int]], list[int], list[bool]]:
    """The boxes, labels and crowd flags of one polygon file's instance objects, each box around the pixels the
    object keeps when the file's polygons are drawn in order on an image of ``size``."""
    from PIL import ImageDraw

    label_of = {name: index + 1 for index, name in enumerate(CITYSCAPES_INSTANCES)}
    objects = _cityscapes_objects(polygons)
    drawn = Image.new("I", size, 0)  # each object's position + 1, later objects over earlier ones
    pen = ImageDraw.Draw(drawn)
    for index, (_, points) in enumerate(objects):
        pen.polygon([tuple(point) for point in points], fill=index + 1)  # as json2instanceImg draws
    painted = np.asarray(drawn)
    boxes, labels, crowd = [], [], []
    for index, (label, points) in enumerate(objects):
        group = label.endswith("group") and label.removesuffix("group") in label_of
        name = label.removesuffix("group") if group else label
        if name not in label_of:
            continue
        (x1, y1), (x2, y2) = np.floor(points.min(axis=0)).astype(int), np.floor(points.max(axis=0)).astype(int)
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, size[0] - 1), min(y2, size[1] - 1)
        if x2 < x1 or y2 < y1:  # wholly outside the image
            continue
        shown = painted[y1 : y2 + 1, x1 : x2 + 1] == index + 1
        xs, ys = np.flatnonzero(shown.any(axis=0)), np.flatnonzero(shown.any(axis=1))
        if len(xs) == 0:  # hidden behind the objects in front of it
            continue
        boxes.append([int(x1 + xs[0]), int(y1 + ys[0]), int(x1 + xs[-1] + 1), int(y1 + ys[-1] + 1)])
        labels.append(label_of[name])
        crowd.append(bool(group))
    return boxes, labels, crowd


def _cityscapes_objects(path: Path) -> list[tuple[str, np.ndarray]]:
    """The drawn objects of a Cityscapes polygon file, in its order: (label, (N, 2) points)."""
    try:
        document = json.loads(read_text(path, kind="polygon file"))
    except ValueError as error:
        raise UserError(f"polygon file {path} is not valid JSON ({error})") from None
    found = document.get("objects") if isinstance(document, dict) else None
    if not isinstance(found, list):
        raise UserError(f"polygon file {path} has no 'objects' list")
    objects = []
    for number, item in enumerate(found, start=1):
        if not isinstance(item, dict) or item.get("deleted") or item.get("label") in CITYSCAPES_UNDRAWN:
            continue
        try:
            points = np.array(item.get("polygon"), dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            points = np.zeros((0, 2))
        if not isinstance(item.get("polygon"), list) or (len(points) == 0 and item["polygon"]):
            raise UserError(f"polygon file {path}, object {number}: expected a 'polygon' list of [x, y] points")
        if len(points) >= 3:  # fewer have no area
            objects.append((str(item.get("label", "")), points))
    return objects
