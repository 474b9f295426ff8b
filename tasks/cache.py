"""``python -m tasks.cache``: what the cache of converted data holds, and deleting the copies nothing reads.

    python -m tasks.cache          # each folder of the cache: its size, and the older copies it holds
    python -m tasks.cache prune    # delete those older copies, and the folders earlier versions wrote

Masks drawn from COCO polygons or YOLO labels, colour masks turned into class indices, and images unpacked
from arrays are written once into the cache (``$MTB_CACHE``, by default ``~/.cache/multitask-backbones``),
under a key that follows their source's paths, sizes and modification times. A changed annotation file or
mask is converted again under a new key, and the older copy stays. Each copy records what it was made from in a
``<copy>.source`` file beside it, written again each time a run reads the copy. A copy is older when a run has
made or read another copy of the same source since: nothing reads it any more, unless a run that started before
the change is still going. ``prune`` deletes only those, and the folders that earlier versions wrote and no
version reads (``RETIRED``).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.data.embedded import cache_root
from tasks.io import write_text

MARKER = ".source"
# copies of masks that earlier versions wrote and that are now looked up as they load (README, "Segmentation")
RETIRED = ("ade20k-masks", "cityscapes-masks", "bdd100k-masks", "pets-masks")


@dataclass(frozen=True)
class Copy:
    """One converted copy in the cache: its folder, what it was made from, and when a run last made or read it."""

    folder: Path
    source: str
    used: int  # the marker's modification time, in nanoseconds


def record_use(folder: Path, source: str) -> None:
    """Write beside the cache copy ``folder`` the line naming what it was made from (atomically), when a run makes
    or reads it: the marker's time says which copy of a source was used last. Advisory: a cache the run may read
    but not write (a shared, read-only one) is read as before, with no marker."""
    with contextlib.suppress(OSError):
        write_text(folder.with_name(folder.name + MARKER), source + "\n")


def copies(kind: Path) -> list[Copy]:
    """The copies in one folder of the cache that record their source: ``<key>`` or ``<key>/<split>``."""
    found = []
    for marker in [*kind.glob(f"*{MARKER}"), *kind.glob(f"*/*{MARKER}")]:
        folder = marker.with_name(marker.name[: -len(MARKER)])
        try:
            found.append(Copy(folder, marker.read_text().strip(), marker.stat().st_mtime_ns))
        except OSError:  # deleted meanwhile by another prune
            continue
    return found


def older_copies(kind: Path) -> list[Copy]:
    """The copies of ``kind`` whose source has a copy that a run made or read since."""
    found = copies(kind)
    newest: dict[str, Copy] = {}
    for copy in found:
        if copy.source not in newest or copy.used > newest[copy.source].used:
            newest[copy.source] = copy
    return [c for c in found if newest[c.source].folder != c.folder]


def size(path: Path) -> int:
    """Bytes in the files under ``path`` (or of the file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MB"


def older_copies_note(folder: Path) -> str | None:
    """One line for a run that just wrote the cache copy ``folder``: how many older copies of its source the
    cache still holds, and the command that deletes them; None where it holds none."""
    root = cache_root()
    try:
        kind = root / folder.relative_to(root).parts[0]
    except ValueError:
        return None
    try:
        source = folder.with_name(folder.name + MARKER).read_text().strip()
    except OSError:  # not written: a read-only cache
        return None
    older = [c for c in older_copies(kind) if c.source == source]
    if not older:
        return None
    return f"cache: {_older(older, source)} remain in {kind}; `python -m tasks.cache prune` deletes them"


def delete(copy: Copy, kind: Path) -> None:
    """Delete a copy, its marker, and its ``<key>`` folder where that is left empty."""
    shutil.rmtree(copy.folder, ignore_errors=True)
    copy.folder.with_name(copy.folder.name + MARKER).unlink(missing_ok=True)
    parent = copy.folder.parent
    with contextlib.suppress(OSError):  # not empty, or gone: another run's
        if parent != kind and not any(parent.iterdir()):
            parent.rmdir()


def _older(older: Sequence[Copy], source: str | None = None) -> str:
    """How many older copies (of ``source``, where given) and their size, in words."""
    count = len(older)
    words = f"{count} older cop{'y' if count == 1 else 'ies'}" + (f" of {source}" if source else "")
    return f"{words} ({megabytes(sum(size(c.folder) for c in older))})"


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.cli import run

    def _main(argv: Sequence[str] | None) -> int:
        from tasks.cli import ArgumentParser

        parser = ArgumentParser(prog="python -m tasks.cache", description=__doc__.splitlines()[0])
        parser.add_argument("command", nargs="?", choices=("list", "prune"), default="list")
        args = parser.parse_args(argv)
        root = cache_root()
        kinds = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        if args.command == "list":
            print(f"cache: {root}" + ("" if kinds else " (empty)"))
            for kind in kinds:
                older = older_copies(kind)
                note = f", {_older(older)}" if older else ""
                retired = " (no longer read)" if kind.name in RETIRED else ""
                print(f"  {kind.name}: {megabytes(size(kind))}{note}{retired}")
            return 0
        freed = 0
        for kind in kinds:
            if kind.name in RETIRED:
                freed += size(kind)
                shutil.rmtree(kind, ignore_errors=True)
                print(f"deleted {kind} (no longer read)")
                continue
            for copy in older_copies(kind):
                freed += size(copy.folder)
                delete(copy, kind)
                print(f"deleted {copy.folder} (an older copy of {copy.source})")
        print(f"freed {megabytes(freed)}" if freed else "nothing to delete")
        return 0

    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
