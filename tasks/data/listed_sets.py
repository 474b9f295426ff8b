"""Classification sets whose splits are lists beside one image folder, read as torchvision downloads them.

- **Food-101** (``food-101/``): ``images/<class>/<id>.jpg`` with ``meta/train.json`` and ``meta/test.json``
  (``{class: ["<class>/<id>", ...]}``); the classes are the sorted keys, as torchvision's ``Food101`` has them.
- **Oxford-IIIT Pet** (``oxford-iiit-pet/``): ``images/<Breed_name>_<n>.jpg`` with ``annotations/trainval.txt`` and
  ``annotations/test.txt`` (``<image> <class 1..37> <species> <breed>`` a line); the classes are named from the
  image names by class id, as torchvision's ``OxfordIIITPet`` names them ("american_bulldog" → "American Bulldog").
- **DTD** (``dtd/``): ``images/<class>/<image>.jpg`` with ``labels/{train,val,test}1.txt`` (torchvision's default
  partition, 1 of 10); the classes are the sorted classes of the train list.
- **FGVC-Aircraft** (``fgvc-aircraft-2013b/``): ``data/images/<id>.jpg`` with ``data/images_variant_<split>.txt``
  (``train``, ``val``, ``trainval``, ``test``) and the 100 variants of ``data/variants.txt``; the published protocol
  trains on ``trainval`` and tests on ``test`` (``--set data.train_split=trainval --set data.val_split=test``).
- **Flowers-102** (``flowers-102/``): ``jpg/image_<id>.jpg`` with ``imagelabels.mat`` (each image's class, 1..102)
  and ``setid.mat`` (the image ids of ``trnid``, ``valid`` and ``tstid``), read with SciPy's ``loadmat`` as
  torchvision's ``Flowers102`` reads them, and its class names.
- **Stanford Cars** (``stanford_cars/``): ``cars_train/`` with ``devkit/cars_train_annos.mat`` and ``cars_test/``
  with ``cars_test_annos_withlabels.mat`` (each annotation's ``fname`` and ``class``, 1..196), and the 196
  ``class_names`` of ``devkit/cars_meta.mat``, read as torchvision's ``StanfordCars`` reads them.

``--data`` names the set's folder or the folder holding it. ``train`` reads Food-101's, Stanford Cars' and the
Pets' train (trainval) split; ``val`` reads their test split, with a note (Flowers-102 has a val split of its own).
A listed image that is missing is skipped and counted by the loader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import UserError
from tasks.io import read_mat, read_text

FOLDERS = {
    "food101": "food-101", "pets": "oxford-iiit-pet", "flowers102": "flowers-102", "dtd": "dtd",
    "aircraft": "fgvc-aircraft-2013b", "cars": "stanford_cars",
}  # fmt: skip
IMAGES = {  # the images folder (Stanford Cars: the train split's; its test images are in cars_test/)
    "food101": "images", "pets": "images", "flowers102": "jpg", "dtd": "images", "aircraft": "data/images",
    "cars": "cars_train",
}  # fmt: skip
LISTS = {  # each set's split files, by our split name
    "food101": {"train": "meta/train.json", "test": "meta/test.json"},
    "pets": {"train": "annotations/trainval.txt", "test": "annotations/test.txt"},
    "flowers102": {"train": "setid.mat", "val": "setid.mat", "test": "setid.mat"},
    "dtd": {split: f"labels/{split}1.txt" for split in ("train", "val", "test")},  # torchvision's partition 1
    "aircraft": {split: f"data/images_variant_{split}.txt" for split in ("train", "val", "trainval", "test")},
    "cars": {"train": "devkit/cars_train_annos.mat", "test": "cars_test_annos_withlabels.mat"},
}
Entries = list[tuple[Path, int]]  # (image, class index) of a split
FLOWER_SETS = {"train": "trnid", "val": "valid", "test": "tstid"}


def _found(root: Path) -> tuple[Path, str] | None:
    """The set's own folder (``root`` or torchvision's folder name under it) and which set it is."""
    for kind, name in FOLDERS.items():
        for folder in (root, root / name, root / name / name):  # torchvision keeps DTD's archive in dtd/dtd/
            if (folder / IMAGES[kind]).is_dir() and (folder / LISTS[kind]["train"]).is_file():
                return folder, kind
    return None


def recognise(root: Path) -> str | None:
    found = _found(root) if root.is_dir() else None
    return found[1] if found else None


def has_split(root: Path, split: str) -> bool:
    found = _found(root)
    return found is not None and split in LISTS[found[1]] and (found[0] / LISTS[found[1]][split]).is_file()


def _food101(path: Path) -> dict[str, list[str]]:
    try:
        listing = json.loads(read_text(path, kind="split list"))
    except ValueError as error:
        raise UserError(f"split list {path} is not valid JSON ({error})") from None
    if not isinstance(listing, dict) or not all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in listing.values()
    ):
        raise UserError(f'split list {path}: expected {{class: ["<class>/<image id>", ...]}}')
    return listing


def pet_list(path: Path) -> list[tuple[str, int]]:
    """(image id, class 0..36) of each line."""
    entries = []
    for number, line in enumerate(read_text(path, kind="split list").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            label = int(fields[1]) - 1
        except (IndexError, ValueError):
            label = -1
        if len(fields) != 4 or label < 0:
            raise UserError(f"split list {path}, line {number}: expected '<image> <class 1..37> <species> <breed>'")
        entries.append((fields[0], label))
    return entries


def _pet_classes(entries: Sequence[tuple[str, int]]) -> list[str]:
    named = {label: image.rsplit("_", 1)[0] for image, label in entries}
    if sorted(named) != list(range(len(named))):
        raise UserError("the Oxford-IIIT Pet split list skips a class id")
    return [" ".join(part.title() for part in named[label].split("_")) for label in sorted(named)]


def _flowers102(folder: Path, lists: dict[str, Path], split: str) -> tuple[Entries, list[str]]:
    """The split's images with their classes (0..101), and the class names."""
    from torchvision.datasets import Flowers102

    sets = read_mat(folder / "setid.mat", kind="Flowers-102 split list", squeeze=True)
    labels = read_mat(folder / "imagelabels.mat", kind="Flowers-102 label list", squeeze=True)
    try:
        ids = [int(i) for i in np.atleast_1d(sets[FLOWER_SETS[split]])]
        classes = np.atleast_1d(labels["labels"]).astype(np.int64) - 1
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder}: setid.mat needs trnid, valid and tstid, imagelabels.mat labels") from None
    names = list(Flowers102.classes)
    if any(not 1 <= i <= len(classes) for i in ids) or classes.min(initial=0) < 0 or classes.max(initial=0) >= 102:
        raise UserError(f"{folder}: setid.mat names an image past imagelabels.mat's, or a label is outside 1..102")
    return [(folder / "jpg" / f"image_{i:05d}.jpg", int(classes[i - 1])) for i in ids], names


def _dtd(folder: Path, lists: dict[str, Path], split: str) -> tuple[Entries, list[str]]:
    return _lines(folder, "dtd", lists[split], lists["train"])


def _aircraft(folder: Path, lists: dict[str, Path], split: str) -> tuple[Entries, list[str]]:
    return _lines(folder, "aircraft", lists[split], lists["train"])


def _lines(folder: Path, kind: str, listing: Path, train: Path) -> tuple[Entries, list[str]]:
    """(image, class) of each line of a DTD or FGVC-Aircraft list, and the classes: DTD's the sorted classes of its
    train list, as torchvision's ``DTD`` has them; FGVC-Aircraft's the lines of ``data/variants.txt``, as
    torchvision's ``FGVCAircraft`` has them (its default annotation level)."""

    def read(path: Path) -> list[tuple[str, str]]:
        pairs = []
        for number, line in enumerate(read_text(path, kind="split list").splitlines(), start=1):
            if not line.strip():
                continue
            if kind == "dtd":
                parts = line.strip().split("/")
                if len(parts) != 2 or not all(parts):
                    raise UserError(f"split list {path}, line {number}: expected '<class>/<image>.jpg'")
                pairs.append((line.strip(), parts[0]))
            else:
                parts = line.strip().split(" ", 1)
                if len(parts) != 2:
                    raise UserError(f"split list {path}, line {number}: expected '<image id> <variant>'")
                pairs.append((f"{parts[0]}.jpg", parts[1]))
        return pairs

    if kind == "dtd":
        names = sorted({name for _, name in read(train)})
    else:
        variants = folder / "data" / "variants.txt"
        names = [line.strip() for line in read_text(variants, kind="class list").splitlines() if line.strip()]
    index = {name: k for k, name in enumerate(names)}
    entries = []
    for image, name in read(listing):
        if name not in index:
            raise UserError(f"split list {listing}: class {name!r} is not one of the {len(names)} classes")
        entries.append((folder / IMAGES[kind] / image, index[name]))
    return entries, names


def _food(folder: Path, lists: dict[str, Path], split: str) -> tuple[Entries, list[str]]:
    """The classes are the sorted keys of the train list, as torchvision's ``Food101`` has them."""
    names = sorted(_food101(lists["train"]))
    index = {name: k for k, name in enumerate(names)}
    listing = _food101(lists[split])
    unknown = sorted(set(listing) - set(index))
    if unknown:
        raise UserError(f"split list {lists[split]}: class {unknown[0]!r} is not in {lists['train'].name}")
    return [
        (folder / "images" / f"{item}.jpg", index[name]) for name, items in listing.items() for item in items
    ], names


def _pets(folder: Path, lists: dict[str, Path], split: str) -> tuple[Entries, list[str]]:
    names = _pet_classes(pet_list(lists["train"]))
    entries = pet_list(lists[split])
    if any(label >= len(names) for _, label in entries):
        raise UserError(f"split list {lists[split]}: a class id is past the {len(names)} of the train list")
    return [(folder / "images" / f"{image}.jpg", label) for image, label in entries], names


def _cars(folder: Path, lists: dict[str, Path], split: str) -> tuple[Entries, list[str]]:
    """Stanford Cars: each annotation's ``fname`` in ``cars_<split>/`` and its ``class`` (1..196), and the
    ``class_names`` of ``devkit/cars_meta.mat``, read with SciPy's ``loadmat`` as torchvision's ``StanfordCars``
    reads them."""
    meta = folder / "devkit" / "cars_meta.mat"
    classes = read_mat(meta, kind="Stanford Cars class list", squeeze=True)
    found = read_mat(lists[split], kind="Stanford Cars annotation file", squeeze=True)
    try:
        names = [str(name) for name in np.atleast_1d(classes["class_names"])]
        entries = [(str(a["fname"]), int(a["class"]) - 1) for a in np.atleast_1d(found["annotations"])]
    except (TypeError, ValueError, IndexError, KeyError):
        raise UserError(f"{lists[split]}: expected annotations with fname and class, and {meta} class_names") from None
    if len(names) < 2 or any(not 0 <= label < len(names) for _, label in entries):
        raise UserError(f"{lists[split]}: a class is outside 1..{len(names)}, the classes of {meta}")
    images = folder / f"cars_{split}"
    return [(images / name, label) for name, label in entries], names


READERS: dict[str, Callable[[Path, dict[str, Path], str], tuple[Entries, list[str]]]] = {
    "food101": _food, "pets": _pets, "flowers102": _flowers102, "dtd": _dtd, "aircraft": _aircraft, "cars": _cars,
}  # fmt: skip


def read_split(root: Path, split: str) -> tuple[list[Any], list[str]]:
    """The samples of ``split`` and the class names (those of the train list, so that both splits agree)."""
    from tasks.data.folders import Sample

    found = _found(root)
    if found is None or split not in LISTS[found[1]]:
        raise UserError(
            f"--data {root} has no split {split!r}: its lists give {', '.join(LISTS[found[1]]) if found else 'none'}"
        )
    folder, kind = found
    lists = {name: folder / relative for name, relative in LISTS[kind].items()}
    if not lists[split].is_file():
        raise UserError(f"--data {root}: its {split} list {lists[split]} does not exist")
    entries, names = READERS[kind](folder, lists, split)
    return [Sample(image, label) for image, label in entries], names
