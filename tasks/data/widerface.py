"""WIDER FACE, as downloaded: ``WIDER_<split>/images/<event>/<image>.jpg`` with
``wider_face_split/wider_face_<split>_bbx_gt.txt``.

The list gives each image's path, its number of faces, then one line a face: ``x y w h blur expression illumination
invalid occlusion pose``, pixels from the top-left corner. An image with no face has a count of 0 and one line of
zeros, which is not a face. A face flagged invalid is kept as a crowd region: not trained on, and ignored by the
evaluators. Faces of no width or height are dropped and counted, as any such box. One class, ``face``. Splits are
``train`` and ``val`` (``test`` has no faces listed).
"""

from __future__ import annotations

from pathlib import Path

from tasks.data.detection import DetectionData, FixCounts, pixel_sample, readable_size
from tasks.errors import UserError
from tasks.io import read_text

SPLITS = (("train",), ("val",))
CLASSES = ("face",)


def _list(root: Path, split: str) -> Path:
    return root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"


def has_split(root: Path, split: str) -> bool:
    return (root / f"WIDER_{split}" / "images").is_dir() and _list(root, split).is_file()


def is_widerface_root(root: Path) -> bool:
    return root.is_dir() and any(has_split(root, split) for split in ("train", "val"))


def read_widerface(root: Path, split: str) -> DetectionData:
    """The split's images with their faces (label 1); invalid faces are crowd regions."""
    path = _list(root, split)
    if not has_split(root, split):
        raise UserError(f"--data {root} (WIDER FACE) has no split {split!r}: expected WIDER_{split}/images/ and {path}")
    lines = read_text(path, kind="face list").splitlines()
    fixes, samples, invalid, at = FixCounts(), [], 0, 0

    def fail(number: int, expected: str) -> UserError:
        return UserError(f"face list {path}, line {number}: expected {expected}")

    while at < len(lines):
        if not lines[at].strip():
            at += 1
            continue
        name = lines[at].strip()
        try:
            count = int(lines[at + 1])
        except (IndexError, ValueError):
            raise fail(at + 2, f"the number of faces in {name}") from None
        rows = lines[at + 2 : at + 2 + count]
        if len(rows) < count:
            raise fail(len(lines) + 1, f"{count} face line(s) for {name}")
        zeros = count == 0 and at + 2 < len(lines) and len(lines[at + 2].split()) == 10  # a faceless image's line
        boxes, crowd = [], []
        for offset, row in enumerate(rows):
            try:
                values = [int(v) for v in row.split()]
            except ValueError:
                values = []
            if len(values) != 10:
                raise fail(at + 3 + offset, "10 numbers: x y w h blur expression illumination invalid occlusion pose")
            x, y, w, h = values[:4]
            boxes.append([x, y, x + w, y + h])
            crowd.append(bool(values[7]))
        at += 2 + count + zeros
        image = root / f"WIDER_{split}" / "images" / name
        size = readable_size(image, fixes)
        if size is None:
            continue
        invalid += sum(crowd)
        samples.append(pixel_sample(Path(name).with_suffix("").as_posix(), image, size, boxes, [1] * len(boxes), fixes,
                                    crowd=crowd))  # fmt: skip
    if invalid:
        print(f"note: {root} ({split}): {invalid} face(s) flagged invalid are not trained on, ignored in scoring")
    return DetectionData(samples, list(CLASSES), [1], f"{root} ({split})", fixes)
