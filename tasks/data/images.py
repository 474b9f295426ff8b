"""Reading images as RGB arrays, whatever mode they were saved in, the way up their EXIF says.

- EXIF orientation is applied (a phone's portrait JPEG is stored landscape with orientation 6): boxes and masks
  are drawn on the image as viewers show it, so that is the image the runners read.
- 16-bit grayscale (``I;16`` PNGs, and 32-bit ``I`` images holding values above 255) is rescaled to 8 bits,
  not clipped at 255. Masks are read elsewhere (:func:`tasks.data.segmentation.load_mask`), as indices.
- An image above PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` × 2, about 179 megapixels) is an
  unreadable file like any other: datasets skip and count it, predict names it in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_METADATA = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})  # chunks that may hold an orientation (EXIF, XMP)


def _png_metadata_after_pixels(image: Image.Image) -> bool:
    """Whether an opened PNG may hold its orientation in a chunk after its pixel data, which Pillow reads only by
    decoding the whole image: the file's chunks are walked by their lengths, the pixels skipped. True where the
    walk fails, so that Pillow decides."""
    fp = getattr(image, "fp", None)
    if fp is None:
        return True
    where = fp.tell()
    try:
        fp.seek(0)
        if fp.read(8) != PNG_SIGNATURE:
            return True
        seen_pixels = False
        while len(header := fp.read(8)) == 8:
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"IEND":
                return False
            seen_pixels = seen_pixels or kind == b"IDAT"
            if seen_pixels and kind in PNG_METADATA:
                return True
            fp.seek(length + 4, 1)  # the data and its CRC
        return False  # a truncated file: its decode fails where it is read
    except (OSError, ValueError):
        return True
    finally:
        fp.seek(where)


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown: EXIF orientations 5-8 turn it a quarter, swapping the two. A PNG is
    not decoded for it where its metadata all comes before its pixels (nearly always), as Pillow's ``getexif``
    would decode it: 14 ms for a 2048 × 1024 Cityscapes image."""
    if image.format == "PNG" and "exif" not in image.info and not _png_metadata_after_pixels(image):
        exif = Image.Image.getexif(image)  # from the chunks already read: Pillow's own reading, without the decode
    else:
        exif = image.getexif()
    orientation = exif.get(EXIF_ORIENTATION, 1)
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as shown, from the file's header. Raises one of ``READ_ERRORS``."""
    with Image.open(path) as image:
        return oriented_size(image)


def load_rgb(path: str | Path) -> np.ndarray:
    """An (H, W, 3) uint8 array, turned as its EXIF orientation says; grayscale (8 or 16 bit), RGBA and palette
    images are converted to RGB.

    Raises one of ``READ_ERRORS`` for a file that is not a readable image.
    """
    with Image.open(path) as image:
        image.load()
        turned = ImageOps.exif_transpose(image)
        return to_rgb(turned)


def to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of any PIL image; 16-bit gray is scaled by 255/65535 rather than clipped."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        if image.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
            values = values * (255.0 / 65535.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


_NAMED: set[str] = set()  # the files this process has warned about


def warn_unreadable(path: str | Path, error: BaseException) -> None:
    """Name an unreadable file and why, once per loading process: training meets the same corrupt file every
    epoch, and the engine counts the skips each epoch (a DataLoader worker keeps its own record, so a file may be
    named once by each worker that meets it)."""
    if str(path) in _NAMED:
        return
    _NAMED.add(str(path))
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"warning: skipping unreadable image {path}: {reason}", file=sys.stderr, flush=True)


CACHE_SHARE = 8  # auto: at most an eighth of the memory available when training starts
CACHE_MAX_MB = 4096  # ... and at most this much, all loading processes of the machine together


class DecodedCache:
    """Decoded images (and segmentation masks) kept in memory after their first read, while they fit a byte budget.

    Training reads every image once an epoch. From the second epoch on, a cached image skips the file's read and
    its PNG or JPEG decode and goes straight to the augmentations, which draw afresh each time. The arrays are
    kept read-only, as :func:`load_rgb` gives them, so no transform can change a cached image. A file that fails
    to read is not kept: it fails again next epoch, and is skipped and counted again. Each DataLoader worker holds
    its own cache (a copy of the dataset's), so a run's budget is divided among them. A budget of 0 keeps nothing.
    """

    def __init__(self, budget_bytes: int = 0) -> None:
        self.budget = max(int(budget_bytes), 0)
        self.used = 0
        self.hits = 0
        self.arrays: dict[str, np.ndarray] = {}

    def load(self, path: str | Path) -> np.ndarray:
        """:func:`load_rgb` of ``path``, from memory where it was read before."""
        image = self.get(path)
        if image is None:
            image = load_rgb(path)
            self.keep(path, image)
        return image

    def get(self, path: str | Path) -> np.ndarray | None:
        """The read-only array kept for ``path``, or None."""
        array = self.arrays.get(str(path))
        if array is not None:
            self.hits += 1
        return array

    def keep(self, path: str | Path, array: np.ndarray) -> None:
        """Keep ``array``, read from ``path`` (an image, or a segmentation mask once checked), made read-only, where
        it fits the budget."""
        if self.used + array.nbytes <= self.budget:
            array.flags.writeable = False
            self.arrays[str(path)] = array
            self.used += array.nbytes


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def plan_cache(megabytes: int | str, *, loaders: int, processes: int = 1) -> tuple[int, str]:
    """The byte budget of each loading process's :class:`DecodedCache`, and the reason, from ``train.cache_mb``:
    the MB that the run may keep on this machine, or ``"auto"``: an eighth of the memory available now, at most
    4096 MB. The total is divided among the run's ``processes`` on this machine and each one's ``loaders`` (its
    DataLoader workers, or 1 where the data loads in the process itself)."""
    if megabytes == "auto":
        free = available_memory()
        if free is None:
            return 0, "off: the available memory is unknown (set train.cache_mb)"
        total = min(free // CACHE_SHARE, CACHE_MAX_MB * 2**20)
        why = f"an eighth of the {free / 2**30:.1f} GiB available, at most {CACHE_MAX_MB} MB"
    else:
        total = int(megabytes) * 2**20
        if total == 0:
            return 0, "off (train.cache_mb 0)"
        why = f"train.cache_mb {megabytes}"
    share = max(loaders, 1) * max(processes, 1)
    if share > 1:
        why += f", divided among {share} loading processes"
    return total // share, why
