"""Classification data: the ImageFolder layout or a CSV of ``path,label``."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data import holdout
from tasks.data.images import READ_ERRORS, DecodedCache, is_image_file, warn_unreadable
from tasks.data.transforms import normalize_batch
from tasks.errors import UserError
from tasks.io import read_text

Transform = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def scan_image_folder(root: Path, classes: Sequence[str] | None = None) -> tuple[list[Sample], list[str]]:
    """Samples of ``root/<class>/**/<image>``; classes are the sorted sub-folders unless given.

    The files are found by torchvision's ``make_dataset``. The classes are not taken from its ``find_classes``:
    that makes every folder a class, hidden ones included, so a Jupyter ``.ipynb_checkpoints`` folder would
    become a class of its own. A class folder absent from a split is allowed (the list came from training); an
    existing one without images is one error line naming it."""
    from torchvision.datasets.folder import make_dataset

    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    class_names = list(classes) if classes else found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise UserError(f"data folder {root} has class folders not in the class list: {unknown}")
    pairs = make_dataset(
        str(root),
        {name: label for label, name in enumerate(class_names)},
        is_valid_file=lambda path: is_image_file(Path(path)),
        allow_empty=True,
    )
    samples = sorted((Sample(Path(path), label) for path, label in pairs), key=lambda s: (s.label, s.path))
    held = {sample.label for sample in samples}
    for label, name in enumerate(class_names):
        if label not in held and (root / name).is_dir():
            raise UserError(f"class folder {root / name} holds no images")
    return samples, class_names


def path_label_rows(path: Path, *, kind: str) -> list[tuple[int, str, str]]:
    """(line number, path, label) of each row of a ``path,label`` CSV: blank and ``#`` lines and an optional header
    skipped, a row without both fields one line naming the ``kind`` of file and the line. Label files and
    classification's predictions files are such CSVs."""
    rows = []
    for number, row in enumerate(csv.reader(read_text(path, kind=kind).splitlines()), start=1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise UserError(f"{kind} {path}, line {number}: expected 'path,label', got {row!r}")
        if number == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
            continue
        if not row[0].strip() or not row[1].strip():  # an empty label would become a class named ''
            raise UserError(f"{kind} {path}, line {number}: the path or the label is empty in {row!r}")
        rows.append((number, row[0].strip(), row[1].strip()))
    return rows


def read_label_csv(path: Path, classes: Sequence[str] | None = None) -> tuple[list[Sample], list[str]]:
    """Samples of a ``path,label`` CSV (an optional header is skipped); paths are relative to the CSV."""
    if not path.is_file():
        raise UserError(f"label file {path} does not exist")
    rows = path_label_rows(path, kind="label file")
    if not rows:
        raise UserError(f"label file {path} lists no images")
    class_names = list(classes) if classes else sorted({label for _, _, label in rows})
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for number, image, label in rows:
        if label not in index:
            raise UserError(f"label file {path}, line {number}: class {label!r} is not in the class list")
        image_path = (path.parent / image).resolve()
        if not image_path.is_file():
            raise UserError(f"label file {path}, line {number}: image {image_path} does not exist")
        samples.append(Sample(image_path, index[label]))
    return samples, class_names


VAL_STAND_INS = holdout.STAND_INS  # Roboflow's folder export (train, valid, test), Ultralytics' (train, test)


def val_or_stand_in(root: Path, split: str, present: Callable[[str], bool]) -> str:
    """``split``; or, where that is ``train`` or ``val`` and ``present`` finds no such split in ``root``, the
    same split under another of its names (COCO's ``train2017``/``val2017`` and 2014's, ``training``/``validation``:
    :func:`holdout.other_names`), silently; or else, for ``val``, the first of its stand-ins that ``present`` finds
    (``valid``, then ``test``), with a note. Otherwise ``split`` unchanged, for the reader to report as missing."""
    if split not in ("train", "val") or present(split):
        return split
    other = next((name for name in holdout.other_names(split) if present(name)), None)
    if other is not None:
        return other
    for stand_in in VAL_STAND_INS if split == "val" else ():
        if present(stand_in):
            print(f"note: --data {root} has no 'val' split: evaluating on its '{stand_in}' split")
            return stand_in
    return split


def find_split(root: Path, split: str, *, fmt: str = "auto") -> tuple[Path, str]:
    """Where a split lives: ``root/<split>/`` (folder) or ``root/<split>.csv`` (csv). With ``auto``, a
    ``<split>/`` of loose images beside ``<split>.csv`` (the layout that also holds boxes and masks, as the
    built-in shapes set's) is the CSV's image folder, not an ImageFolder. Where there is no ``val`` split, a
    ``valid`` or ``test`` one stands in for it, with a note."""
    if not root.exists():
        raise UserError(f"--data {root} does not exist")
    if root.is_file() and root.suffix == ".csv":
        return root, "csv"
    split = val_or_stand_in(root, split, lambda name: _split_location(root, name, fmt) is not None)
    found = _split_location(root, split, fmt)
    if found is None:
        raise UserError(f"--data {root} has no '{split}' split: expected {root}/{split}/<class>/ or {root}/{split}.csv")
    return found


def _split_location(root: Path, split: str, fmt: str) -> tuple[Path, str] | None:
    candidates = []
    if fmt in ("auto", "folder"):
        candidates.append((root / split, "folder"))
    if fmt in ("auto", "csv"):
        candidates.append((root / f"{split}.csv", "csv"))
    for candidate, kind in candidates:
        if kind == "folder" and candidate.is_dir():
            loose = fmt == "auto" and not any(p.is_dir() for p in candidate.iterdir())
            if not (loose and (root / f"{split}.csv").is_file()):
                return candidate, kind
        if kind == "csv" and candidate.is_file():
            return candidate, kind
    return None


def load_split(
    root: Path,
    split: str,
    *,
    fmt: str,
    classes: Sequence[str] | None,
    val_fraction: float = holdout.DEFAULT_FRACTION,
) -> tuple[list[Sample], list[str]]:
    """The samples of ``split`` and the class names. Where the root has no ``val`` split (nor a stand-in), the
    default splits ``train`` and ``val`` are held out of its train split, or of the root itself as an ImageFolder
    of class folders: ``val_fraction`` of each class (see :mod:`tasks.data.holdout`)."""
    from tasks.data import array_sets, imagenet, listed_sets  # imagenet reads its train split through this module

    for published in (array_sets, listed_sets):  # the sets torchvision downloads, in its layouts
        if fmt in ("auto", "folder") and published.recognise(root):
            split = val_or_stand_in(root, split, lambda name, sets=published: sets.has_split(root, name))
            samples, names = published.read_split(root, split)
            if classes is not None and list(classes) != names:
                raise UserError(f"--data {root}: its classes ({', '.join(names[:5])}, ...) are not the model's")
            return samples, names
    if fmt in ("auto", "folder") and imagenet.is_kaggle_imagenet(root):  # the flat val folder needs its solution file
        split = val_or_stand_in(root, split, lambda name: imagenet.has_split(root, name))
        return imagenet.read_imagenet_split(root, split, classes)
    source = _holdout_source(root, split, fmt)
    if source is None:
        location, kind = find_split(root, split, fmt=fmt)
        return read_label_csv(location, classes) if kind == "csv" else scan_image_folder(location, classes)
    location, kind = source
    samples, class_names = read_label_csv(location, classes) if kind == "csv" else scan_image_folder(location, classes)
    keys = [holdout.key_of(s.path, root) for s in samples]
    rest, held = holdout.parts(samples, keys, val_fraction, [s.label for s in samples])
    if split == "val":
        holdout.note(root, val_fraction, len(held), len(samples), per=" of each class")
        return held, class_names
    return rest, class_names


def _holdout_source(root: Path, split: str, fmt: str) -> tuple[Path, str] | None:
    """The data a default split is held out of (the train split, or the root as an ImageFolder of class folders
    none of which is named like a split), or None where the root has a val split or a stand-in, or is no folder."""
    if not root.is_dir():
        return None

    def present(name: str) -> bool:
        if name != holdout.WHOLE:
            return _split_location(root, name, fmt) is not None
        folders = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return fmt in ("auto", "folder") and bool(folders) and not holdout.names_a_split(folders)

    whole = holdout.source_split(split, present, ("train", *holdout.other_names("train")))
    if whole is None:
        return None
    return (root, "folder") if whole == holdout.WHOLE else _split_location(root, whole, fmt)


class ClassificationDataset(Dataset[dict[str, Any] | None]):
    """Images and labels; an unreadable image yields None, which the collate skips and counts."""

    def __init__(self, samples: Sequence[Sample], transform: Transform) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.decoded = DecodedCache()  # nothing kept until the engine gives it a budget (train.cache_mb)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            image = self.decoded.load(sample.path)
        except READ_ERRORS as error:
            warn_unreadable(sample.path, error)
            return None
        return {"image": self.transform(image), "label": sample.label, "index": index}


def collate_classification(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the readable items; ``skipped`` counts the ones that were not. uint8 images (the training
    pipeline's) are normalised here, the batch at once (:func:`normalize_batch`)."""
    good = [item for item in items if item is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(good), "batch_size": len(good)}
    if good:
        batch["images"] = normalize_batch(torch.stack([item["image"] for item in good]))
        batch["labels"] = torch.tensor([item["label"] for item in good], dtype=torch.long)
        batch["indices"] = torch.tensor([item["index"] for item in good], dtype=torch.long)
    else:
        batch["images"] = torch.empty(0)
        batch["labels"] = torch.empty(0, dtype=torch.long)
        batch["indices"] = torch.empty(0, dtype=torch.long)
    return batch
