"""Built-in default data, made once from packages already installed, so first runs need no download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_VERSION = "digits-v1"


def cache_root() -> Path:
    base = os.environ.get("MTB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "multitask-backbones"
    )
    return Path(base)


def digits_imagefolder(root: Path | None = None, *, size: int = 32) -> Path:
    """scikit-learn's 1,797 handwritten digits (8×8) as a 32×32 PNG ImageFolder.

    Every fifth image of each class goes to ``val`` (deterministic, 355 images); the rest
    to ``train``. Built once into a temporary folder and renamed into place, so a run
    that is interrupted never leaves a half-written dataset behind.
    """
    root = root or cache_root()
    target = root / f"{DIGITS_VERSION}-{size}px"
    if (target / "val").is_dir():
        return target
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    seen = np.zeros(10, dtype=int)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        split = "val" if seen[label] % 5 == 4 else "train"
        seen[label] += 1
        folder = staging / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
        image.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{index:04d}.png")
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
