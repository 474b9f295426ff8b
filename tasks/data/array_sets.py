"""Classification sets stored as arrays, read as torchvision downloads them: MNIST's family and CIFAR.

- **MNIST, Fashion-MNIST, KMNIST**: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``) in the folder
  given or its ``raw/`` (torchvision's ``MNIST/raw/``). The classes follow the folder's name: Fashion-MNIST's and
  KMNIST's as torchvision names them, else MNIST's (torchvision's ``MNIST.classes``, "0 - zero" ...).
- **CIFAR-10 and CIFAR-100**: the Python version (``cifar-10-batches-py``: ``data_batch_1..5``, ``test_batch``,
  ``batches.meta``; ``cifar-100-python``: ``train``, ``test``, ``meta``, the 100 fine classes) or the binary one
  (``cifar-10-batches-bin``, ``cifar-100-binary``), in the folder given or under it. The Python version's files are
  pickles: they are read by an unpickler that builds lists, dicts, strings, numbers and NumPy arrays and refuses
  any other object, so a file that names anything else stops the run instead of running it.

Splits are ``train`` and ``test`` (``val`` reads ``test``, with a note). Each split's images are written once as PNGs
under ``<cache>/array-sets/<key>/`` (the key follows the files' paths, sizes and modification times) and read from
there like any other images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.data.coco_masks import masks_once
from tasks.data.embedded import cache_root
from tasks.errors import UserError

VERSION = 1  # in the cache key
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
MNIST_CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                 "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine")  # fmt: skip
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
CIFAR_FOLDERS = ("cifar-10-batches-py", "cifar-10-batches-bin", "cifar-100-python", "cifar-100-binary")
CIFAR_FILES = {  # (train files, test files, names file) of each form
    "cifar-10-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar-10-bin": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], "batches.meta.txt"),
    "cifar-100-py": (["train"], ["test"], "meta"),
    "cifar-100-bin": (["train.bin"], ["test.bin"], "fine_label_names.txt"),
}
SPLITS = ("train", "test")


def _mnist_folder(root: Path) -> Path | None:
    for folder in (root, root / "raw"):
        if any(_idx_file(folder, name) for name in MNIST_FILES["train"] + MNIST_FILES["test"]):
            return folder
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    return next((folder / f"{name}{s}" for s in ("", ".gz") if (folder / f"{name}{s}").is_file()), None)


def _cifar(root: Path) -> tuple[Path, str] | None:
    """The folder of a CIFAR set in ``root`` (itself or one of torchvision's folder names under it) and its form."""
    for folder in (root, *(root / name for name in CIFAR_FOLDERS)):
        for form, (train, test, names) in CIFAR_FILES.items():  # the class names beside a batch: not a stray file
            if (folder / names).is_file() and ((folder / train[0]).is_file() or (folder / test[0]).is_file()):
                return folder, form
    return None


def recognise(root: Path) -> str | None:
    """``"mnist"``, a CIFAR form (``"cifar-10-py"`` ...) or None."""
    if not root.is_dir():
        return None
    if _mnist_folder(root) is not None:
        return "mnist"
    found = _cifar(root)
    return found[1] if found else None


def has_split(root: Path, split: str) -> bool:
    if split not in SPLITS:
        return False
    folder = _mnist_folder(root)
    if folder is not None:
        return all(_idx_file(folder, name) for name in MNIST_FILES[split])
    found = _cifar(root)
    if found is None:
        return False
    files = CIFAR_FILES[found[1]][SPLITS.index(split)]
    return all((found[0] / name).is_file() for name in files)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read {path} ({error})") from None


def _idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format): a 4-byte magic (0, 0, 8, dims), the sizes, the data."""
    data = _read_bytes(path)
    if len(data) < 4 + 4 * dims or data[:4] != bytes([0, 0, 8, dims]):
        raise UserError(f"{path} is not an IDX file of {dims}-dimensional unsigned bytes (MNIST's format)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} holds {body.size} bytes of data, not the {shape} its header gives")
    return body.reshape(shape)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only plain containers, strings, numbers and NumPy arrays: any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not an array")
        return found


def _unpickled(path: Path) -> dict[str, Any]:
    try:
        loaded = _ArrayUnpickler(io.BytesIO(_read_bytes(path)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UserError(f"{path} is not a CIFAR batch of arrays ({error})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} is not a CIFAR batch: expected a dict, found {type(loaded).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in loaded.items()}


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _cifar_names(folder: Path, form: str) -> list[str]:
    path = folder / CIFAR_FILES[form][2]
    if form.endswith("-bin"):
        return [line.strip() for line in _read_bytes(path).decode("utf-8").splitlines() if line.strip()]
    meta = _unpickled(path)
    names = meta.get("label_names" if form == "cifar-10-py" else "fine_label_names")
    if not isinstance(names, list):
        raise UserError(f"{path} has no list of class names")
    return [_text(name) for name in names]


def _cifar_split(folder: Path, form: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) labels."""
    images, labels = [], []
    for name in CIFAR_FILES[form][SPLITS.index(split)]:
        path = folder / name
        if form.endswith("-bin"):
            head = 1 if form == "cifar-10-bin" else 2  # CIFAR-100 records the coarse label, then the fine one
            data = np.frombuffer(_read_bytes(path), np.uint8)
            if data.size % (head + 3072):
                raise UserError(f"{path} is not a CIFAR binary batch: its size is no multiple of {head + 3072} bytes")
            records = data.reshape(-1, head + 3072)
            labels.append(records[:, head - 1].astype(np.int64))
            images.append(records[:, head:])
            continue
        batch = _unpickled(path)
        pixels, found = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.shape[1] != 3072 or found is None:
            raise UserError(f"{path} is not a CIFAR batch: expected 'data' (N x 3072 bytes) and its labels")
        images.append(pixels.astype(np.uint8))
        labels.append(np.asarray(found, np.int64))
    pixels = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return pixels, np.concatenate(labels)


def _mnist_names(folder: Path) -> list[str]:
    named = {p.name.lower() for p in (folder, folder.parent)}
    if "fashionmnist" in named or "fashion-mnist" in named:
        return list(FASHION_CLASSES)
    return list(KMNIST_CLASSES if "kmnist" in named else MNIST_CLASSES)


def read_split(root: Path, split: str, classes: Sequence[str] | None) -> tuple[list[Any], list[str]]:
    """The samples of ``split`` (images written once into the cache) and the class names."""
    from tasks.data.folders import Sample

    if not has_split(root, split):
        raise UserError(f"--data {root} has no split {split!r}: MNIST's and CIFAR's files hold train and test")
    mnist = _mnist_folder(root)
    if mnist is not None:
        files = [_idx_file(mnist, name) for name in MNIST_FILES[split]]
        names = _mnist_names(mnist)
    else:
        found = _cifar(root)
        assert found is not None
        folder, form = found
        files = [folder / name for name in CIFAR_FILES[form][SPLITS.index(split)]]
        names = _cifar_names(folder, form)
    if classes is not None and list(classes) != names:
        raise UserError(f"--data {root}: its classes ({', '.join(names[:5])}, ...) are not the model's")
    parts = [f"{VERSION}|{split}"]
    for path in files:
        assert path is not None
        stat = path.stat()
        parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    target = cache_root() / "array-sets" / hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]

    def arrays() -> tuple[np.ndarray, np.ndarray]:
        if mnist is not None:
            images, labels = _idx(files[0], 3), _idx(files[1], 1).astype(np.int64)  # type: ignore[arg-type]
            if len(images) != len(labels):
                raise UserError(f"{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels")
            return images, labels
        return _cifar_split(folder, form, split)

    labels_file = target / "labels.npy"
    if not labels_file.is_file():
        images, labels = arrays()
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise UserError(f"--data {root} ({split}): a label is outside the {len(names)} classes")

        def write(folder: Path) -> None:
            folder.mkdir(parents=True)
            for index, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{index:06d}.png", compress_level=1)
            np.save(folder / "labels.npy", labels)

        masks_once(target, write)
    labels = np.load(labels_file)
    return [Sample(target / f"{index:06d}.png", int(label)) for index, label in enumerate(labels)], names
