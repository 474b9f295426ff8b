"""Classification sets stored as arrays, read as torchvision downloads them: MNIST's family and CIFAR.

- **MNIST, Fashion-MNIST, KMNIST**: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``) in the folder
  given or its ``raw/`` (torchvision's ``MNIST/raw/``). The classes follow the folder's name: Fashion-MNIST's and
  KMNIST's as torchvision names them, else MNIST's (torchvision's ``MNIST.classes``, "0 - zero" ...).
- **CIFAR-10 and CIFAR-100**: the Python version (``cifar-10-batches-py``: ``data_batch_1..5``, ``test_batch``,
  ``batches.meta``; ``cifar-100-python``: ``train``, ``test``, ``meta``, the 100 fine classes) or the binary one
  (``cifar-10-batches-bin``, ``cifar-100-binary``), in the folder given or under it. The Python version's files are
  pickles: they are read by an unpickler that builds lists, dicts, strings, numbers and NumPy arrays and refuses
  any other object, so a file that names anything else stops the run instead of running it.

- **SVHN**: ``train_32x32.mat``, ``test_32x32.mat`` (and ``extra_32x32.mat``, the ``extra`` split), read with SciPy's
  ``loadmat`` as torchvision's ``SVHN`` reads them (its label 10 is the digit 0).
- **STL-10** (``stl10_binary``): ``{train,test}_X.bin`` (96 × 96 images, stored column by column) with ``_y.bin``
  and ``class_names.txt``; the unlabelled images are not read.

Splits are ``train`` and ``test`` (``val`` reads ``test``, with a note). Each split's images are written once as PNGs
under ``<cache>/array-sets/<key>/`` (the key follows the files' paths, sizes and modification times) and read from
there like any other images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.cache import record_use
from tasks.data.coco_masks import masks_once
from tasks.data.embedded import cache_root
from tasks.errors import UserError
from tasks.io import PNG_OPTIONS, read_mat, read_text

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


def _locate(root: Path) -> tuple[Path, str] | None:
    """The set's folder and kind: ``"mnist"``, a CIFAR form (``"cifar-10-py"`` ...), ``"svhn"`` or ``"stl10"``."""
    if not root.is_dir():
        return None
    mnist = _mnist_folder(root)
    if mnist is not None:
        return mnist, "mnist"
    cifar = _cifar(root)
    if cifar is not None:
        return cifar
    if any((root / f"{split}_32x32.mat").is_file() for split in SPLITS):
        return root, "svhn"
    for folder in (root, root / "stl10_binary"):
        if (folder / "class_names.txt").is_file() and any((folder / f"{s}_X.bin").is_file() for s in SPLITS):
            return folder, "stl10"
    return None


def recognise(root: Path) -> str | None:
    found = _locate(root)
    return found[1] if found else None


def _split_files(folder: Path, kind: str, split: str) -> list[Path | None]:
    """The files that hold ``split``'s images and labels (None where an MNIST file is missing)."""
    if kind == "mnist":
        return [_idx_file(folder, name) for name in MNIST_FILES[split]]
    if kind == "svhn":
        return [folder / f"{split}_32x32.mat"]
    if kind == "stl10":
        return [folder / f"{split}_X.bin", folder / f"{split}_y.bin"]
    return [folder / name for name in CIFAR_FILES[kind][SPLITS.index(split)]]


def has_split(root: Path, split: str) -> bool:
    found = _locate(root)
    if found is None or not (split in SPLITS or (found[1] == "svhn" and split == "extra")):
        return False
    return all(path is not None and path.is_file() for path in _split_files(*found, split))


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
        return [line.strip() for line in read_text(path, kind="class list").splitlines() if line.strip()]
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


def _names(folder: Path, kind: str) -> list[str]:
    if kind == "mnist":
        return _mnist_names(folder)
    if kind == "svhn":
        return [str(digit) for digit in range(10)]  # torchvision's SVHN labels are the digits themselves
    if kind == "stl10":
        text = read_text(folder / "class_names.txt", kind="class list")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return _cifar_names(folder, kind)


def _arrays(kind: str, folder: Path, split: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) or (N, H, W, 3) uint8 images and (N,) labels of one split."""
    if kind == "mnist":
        images, labels = _idx(files[0], 3), _idx(files[1], 1).astype(np.int64)
        if len(images) != len(labels):
            raise UserError(f"{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels")
        return images, labels
    if kind == "svhn":
        loaded = read_mat(files[0], kind="SVHN file")
        try:
            pixels, digits = np.asarray(loaded["X"]), np.asarray(loaded["y"]).astype(np.int64).reshape(-1)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"SVHN file {files[0]} has no X of images and y of labels") from None
        if pixels.ndim != 4 or pixels.shape[:3] != (32, 32, 3) or pixels.shape[3] != len(digits):
            raise UserError(f"{files[0]}: X is {pixels.shape}, not 32 x 32 x 3 x {len(digits)} (one per label)")
        return pixels.transpose(3, 0, 1, 2).astype(np.uint8), np.where(digits == 10, 0, digits)
    if kind == "stl10":
        data = np.frombuffer(_read_bytes(files[0]), np.uint8)
        labels = np.frombuffer(_read_bytes(files[1]), np.uint8).astype(np.int64) - 1
        if data.size != len(labels) * 3 * 96 * 96:
            raise UserError(f"{files[0]} holds {data.size} bytes: not {len(labels)} 96 x 96 images, one per label")
        return data.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1), labels  # stored column by column
    return _cifar_split(folder, kind, split)


def read_split(root: Path, split: str) -> tuple[list[Any], list[str]]:
    """The samples of ``split`` (images written once into the cache) and the class names."""
    from tasks.data.folders import Sample

    found = _locate(root)
    if found is None or not has_split(root, split):
        raise UserError(f"--data {root} has no split {split!r}: its files hold train and test")
    folder, kind = found
    files = [path for path in _split_files(folder, kind, split) if path is not None]
    names = _names(folder, kind)
    parts = [f"{VERSION}|{split}"]
    for path in files:
        stat = path.stat()
        parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    target = cache_root() / "array-sets" / hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]

    labels_file = target / "labels.npy"
    source = f"{root.resolve()} ({split})"
    if not labels_file.is_file():
        images, labels = _arrays(kind, folder, split, files)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise UserError(f"--data {root} ({split}): a label is outside the {len(names)} classes")

        def write(staging: Path) -> None:
            staging.mkdir(parents=True)
            for index, image in enumerate(images):
                Image.fromarray(image).save(staging / f"{index:06d}.png", format="PNG", **PNG_OPTIONS)
            np.save(staging / "labels.npy", labels)

        masks_once(target, write, source=source)
    else:
        record_use(target, source)
    labels = np.load(labels_file)
    return [Sample(target / f"{index:06d}.png", int(label)) for index, label in enumerate(labels)], names
