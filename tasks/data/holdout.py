"""A validation split held out of data that has none: the same images every run, chosen by a hash of each path.

A user's own data often comes as one labelled folder: an ImageFolder of class folders (Kaggle's downloads),
LabelImg's images with their XML files, YOLO's ``images/`` and ``labels/``, or a train split and nothing else.
Where a task's default ``val`` split (and its stand-ins, ``valid`` and ``test``) is missing, the runners hold out
``data.val_fraction`` of the images for validation, as Keras' ``validation_split`` and Ultralytics' ``autosplit``
do, and say so. The choice is a property of each file, not of a random draw: an image is held out when the SHA-1
of its path under the data root is among the smallest of its group (its class, for classification). So training,
a later ``eval`` and an ``export --quantize`` calibration all see the same split without a file to keep, and adding
images moves few of the old ones across.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tasks.errors import UserError

T = TypeVar("T")

DEFAULT_FRACTION = 0.2
WHOLE = "."  # the split name of a root that is one split: LabelImg's folder, YOLO's images/ and labels/
STAND_INS = ("valid", "test")  # what stands in for a missing val split, in order (folders.val_or_stand_in)
RELEASES = ("2017", "2014")  # COCO names its default splits by release: train2017 and val2017 are train and val
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})


def check_fraction(fraction: float) -> float:
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 < fraction < 1.0:
        raise UserError(f"--set data.val_fraction={fraction!r}: the share held out for validation must be in (0, 1)")
    return float(fraction)


def held_out(keys: Sequence[str], fraction: float, groups: Sequence[Hashable] | None = None) -> set[int]:
    """The indices of the held-out items: in each group, the ``fraction × n`` keys (rounded half up) with the
    smallest SHA-1, at least one where a group has two or more items, and never a whole group."""
    fraction = check_fraction(fraction)
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups if groups is not None else [None] * len(keys)):
        members.setdefault(group, []).append(index)
    chosen: set[int] = set()
    for indices in members.values():
        count = len(indices)
        take = min(max(math.floor(fraction * count + 0.5), 1), count - 1)
        ranked = sorted(indices, key=lambda i: hashlib.sha1(keys[i].encode("utf-8")).hexdigest())
        chosen.update(ranked[:take])
    return chosen


def parts(
    items: Sequence[T], keys: Sequence[str], fraction: float, groups: Sequence[Hashable] | None = None
) -> tuple[list[T], list[T]]:
    """(the rest, the held out) of ``items``, each in their order; ``keys`` and ``groups`` as for :func:`held_out`."""
    held = held_out(keys, fraction, groups)
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def other_names(split: str) -> tuple[str, ...]:
    """The names that the default ``split`` (``train`` or ``val``) goes by elsewhere, in the order they are looked
    for: COCO's releases, newest first (``train2017``, ``train2014``), then ``training`` / ``validation`` (ADE20K's,
    and many a Kaggle set's)."""
    if split not in ("train", "val"):
        return ()
    return (*(f"{split}{year}" for year in RELEASES), "training" if split == "train" else "validation")


CVAT_SUBSET = "default"  # the subset name of CVAT's exports (COCO, Pascal VOC, segmentation masks) of one task


def source_split(split: str, present: Callable[[str], bool], trains: Sequence[str] = ("train",)) -> str | None:
    """The split that the default ``split`` (``train`` or ``val``) is held out of: the first of ``trains`` that
    ``present`` finds, or the whole root (:data:`WHOLE`), where it finds neither val nor a stand-in; else None."""
    if split not in ("train", "val") or any(present(name) for name in ("val", *other_names("val"), *STAND_INS)):
        return None
    return next((name for name in (*trains, WHOLE) if present(name)), None)


def key_of(path: Path, root: Path) -> str:
    """The hashed name of a file: its path under the data root, with forward slashes."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def names_a_split(folder_names: Sequence[str]) -> bool:
    """Whether a folder name looks like a split (in any case, ``train2017`` as well): such a root is mis-named,
    not un-split."""
    return any(name.lower().removesuffix(year) in SPLIT_NAMES for name in folder_names for year in ("", *RELEASES))


_SAID: set[str] = set()  # the notes this command has printed (:func:`forget_notes` at each command's start)


def note(root: Path, fraction: float, held: int, total: int, *, per: str = "") -> None:
    """The note that a val split is held out, printed once a command: the multi-task runner reads a task's data
    for training and then for validation, and two tasks may hold out of one root."""
    text = (
        f"note: --data {root} has no 'val' split: holding out {fraction:.0%}{per} for validation ({held} of "
        f"{total} images, the same ones every run: chosen by a hash of each path; data.val_fraction sets the share)"
    )
    if text not in _SAID:
        _SAID.add(text)
        print(text)


def forget_notes() -> None:
    """A new command (``tasks.cli.run``) says its notes again."""
    _SAID.clear()


def fraction_for_eval(given: float, checkpoint: dict[str, Any]) -> float:
    """The share to hold out when evaluating a checkpoint: the one it was trained with, unless one is set."""
    saved = (checkpoint.get("config") or {}).get("data", {}).get("val_fraction")
    return float(saved) if given == DEFAULT_FRACTION and isinstance(saved, (int, float)) else given
