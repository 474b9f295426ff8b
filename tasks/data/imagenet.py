"""ImageNet (ILSVRC 2012 classification) as Kaggle's "ImageNet Object Localization Challenge" ships it.

``ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG`` is an ImageFolder, but ``ILSVRC/Data/CLS-LOC/val/`` is one flat folder
of 50,000 images whose classes are in ``LOC_val_solution.csv`` (``ImageId,PredictionString``: the wnid of each box,
``n01751748 x1 y1 x2 y2 ...``; an image's class is its boxes' wnid), and ``LOC_synset_mapping.txt`` lists the 1,000
wnids with their names (``n01440764 tench, Tinca tinca``). The classes are the wnids in that file's order, which is
the sorted order of the train folders, so class k is torchvision's ImageNet class k. The classic alternative,
``val/`` sorted into ``<wnid>/`` folders (``valprep.sh``), is an ImageFolder already.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from tasks.data.folders import Sample, scan_image_folder
from tasks.errors import UserError
from tasks.io import read_text

SOLUTION, SYNSETS = "LOC_val_solution.csv", "LOC_synset_mapping.txt"
IMAGES = Path("ILSVRC") / "Data" / "CLS-LOC"


def is_kaggle_imagenet(root: Path) -> bool:
    return root.is_dir() and (root / SYNSETS).is_file() and (root / IMAGES).is_dir()


def has_split(root: Path, split: str) -> bool:
    return (root / IMAGES / split).is_dir() and (split != "val" or (root / SOLUTION).is_file())


def synsets(root: Path) -> list[str]:
    """The wnids of ``LOC_synset_mapping.txt``, in its order."""
    path = root / SYNSETS
    wnids = []
    for number, line in enumerate(read_text(path, kind="synset list").splitlines(), start=1):
        if not line.strip():
            continue
        wnid = line.split(maxsplit=1)[0]
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise UserError(f"synset list {path}, line {number}: expected 'n<digits> name', got {line!r}")
        wnids.append(wnid)
    if len(set(wnids)) != len(wnids) or len(wnids) < 2:
        raise UserError(
            f"synset list {path}: expected 2 or more distinct wnids, got {len(wnids)} ({len(set(wnids))} distinct)"
        )
    return wnids


def read_imagenet_split(root: Path, split: str, classes: Sequence[str] | None) -> tuple[list[Sample], list[str]]:
    """The samples of ``split`` (``train``: the class folders; ``val``: the flat folder through the solution file)
    and the class names, the synset list's wnids unless ``classes`` are given."""
    names = list(classes) if classes else synsets(root)
    if split != "val":
        return scan_image_folder(root / IMAGES / split, names)
    folder, solution = root / IMAGES / "val", root / SOLUTION
    if not solution.is_file():
        raise UserError(
            f"--data {root} (Kaggle's ImageNet) has no {SOLUTION}: the flat val/ folder takes its labels from it"
        )
    label_of = {wnid: index for index, wnid in enumerate(names)}
    samples = []
    rows = list(csv.reader(read_text(solution, kind="solution file").splitlines()))
    for number, row in enumerate(rows[1:], start=2):  # the header: ImageId,PredictionString
        if not row:
            continue
        wnids = row[1].split()[::5] if len(row) == 2 else []
        if not wnids or any(w not in label_of for w in wnids) or len(set(wnids)) != 1:
            raise UserError(
                f"solution file {solution}, line {number}: expected 'ImageId,wnid x1 y1 x2 y2 ...' with one wnid of "
                f"{SYNSETS}, got {','.join(row)!r}"
            )
        image = folder / f"{row[0]}.JPEG"
        if not image.is_file():
            raise UserError(f"image {image} (line {number} of {solution}) does not exist")
        samples.append(Sample(image, label_of[wnids[0]]))
    if not samples:
        raise UserError(f"solution file {solution} lists no images")
    return sorted(samples, key=lambda s: (s.label, s.path)), names
