"""Reading images as RGB arrays, whatever mode they were saved in."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_rgb(path: str | Path) -> np.ndarray:
    """An (H, W, 3) uint8 array; grayscale, RGBA and palette images are converted to RGB.

    Raises one of ``READ_ERRORS`` for a file that is not a readable image.
    """
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("RGB"))


def warn_unreadable(path: str | Path, error: BaseException) -> None:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"warning: skipping unreadable image {path}: {reason}", file=sys.stderr, flush=True)
