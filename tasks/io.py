"""Reading and writing files: atomic writes, so an interrupted run never leaves a half-written checkpoint or metrics
file; UTF-8 text and MATLAB files, read with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tasks.errors import UserError

# How the PNGs a run writes are compressed (pictures, predicted masks, mask and image caches): zlib's fastest level
# with its run-length strategy. On 1280 x 960 photos that wrote 3.2-6.4x faster than Pillow's default (level 6), for
# files from 1% smaller to 4% larger, and palette masks smaller still; PNG is lossless, so the pixels are the same
# (docs/results.md, "Pictures and masks written at zlib's fastest level"). Pillow's keyword arguments.
PNG_OPTIONS: dict[str, int] = {"compress_level": 1, "compress_type": zlib.Z_RLE}


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what a plain open() would have given, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_text(path: str | os.PathLike[str], *, kind: str) -> str:
    """A text file as UTF-8 (whatever the locale says; a leading byte-order mark is dropped). A file in another
    encoding is a one-line error naming the ``kind`` of file."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{kind} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None


def read_mat(path: str | os.PathLike[str], *, kind: str, squeeze: bool = False) -> dict[str, Any]:
    """A MATLAB file's variables, read by SciPy's ``loadmat`` (``squeeze``: its ``squeeze_me``). A file it cannot
    read is a one-line error naming the ``kind`` of file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(path, squeeze_me=squeeze)
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError) as error:
        raise UserError(f"{kind} {path} is not a MATLAB file SciPy reads ({error})") from None


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
