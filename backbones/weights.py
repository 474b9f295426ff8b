"""Checkpoint files, URLs and official names turned into a state dict, and loaded strictly.

Nothing here unpickles arbitrary objects: ``.safetensors`` files are read with
safetensors, everything else with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.body.", "backbone.", "encoder.")
CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")
TORCHVISION_NAMES = ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT")


class WeightsError(ValueError):
    """Weights that cannot be found, read or matched to the model."""


def official_url(name: str, arch: str) -> str:
    """The download URL of an official checkpoint.

    ``name`` is a torchvision weight name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``,
    ``DEFAULT``) or ``timm`` / ``timm:<tag>`` for timm's pretrained tags
    (e.g. ``timm:a1_in1k``), served from the Hugging Face hub as safetensors.
    """
    if name in TORCHVISION_NAMES:
        from torchvision.models import get_model_weights

        try:
            enum = get_model_weights(arch)
        except ValueError:
            raise WeightsError(f"torchvision publishes no weights for {arch!r}; try weights='timm'") from None
        try:
            return str(enum[name].url)
        except KeyError:
            valid = [w.name for w in enum] + ["DEFAULT"]
            raise WeightsError(f"torchvision has no {name!r} weights for {arch}: choose one of {valid}") from None
    if name == "timm" or name.startswith("timm:"):
        import timm

        tag = name.partition(":")[2]
        full = f"{arch}.{tag}" if tag else arch
        try:
            cfg = timm.models.get_pretrained_cfg(full)
        except RuntimeError:  # timm raises for an unknown tag of a known model
            cfg = None
        if cfg is None:
            tags = sorted(m.partition(".")[2] for m in timm.list_pretrained(f"{arch}.*"))
            raise WeightsError(f"timm has no pretrained weights {full!r}: tags for {arch} are {tags}")
        if cfg.hf_hub_id:  # timm's own preference: the hub copy over a legacy release URL
            return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
        if cfg.url:
            return str(cfg.url)
        raise WeightsError(f"timm's pretrained config {full!r} names no download location")
    raise WeightsError(
        f"weights={name!r} is not a file, a URL or an official name "
        f"(one of {list(TORCHVISION_NAMES)}, 'timm' or 'timm:<tag>')"
    )


def cached_download(url: str) -> Path:
    """Download ``url`` once into torch hub's checkpoint cache and return the local path.

    ``file://`` URLs work too, which is how the tests exercise this path offline.
    """
    parsed = urlparse(url)
    filename = os.path.basename(parsed.path)
    if parsed.netloc == "huggingface.co":  # every hub file is called model.safetensors
        repo = parsed.path.split("/resolve/")[0].strip("/")
        filename = f"{repo.replace('/', '--')}--{filename}"
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / filename
    if not target.exists():
        match = re.search(r"-([a-f0-9]{8,})\.", filename)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None)
        except (OSError, RuntimeError) as error:
            raise WeightsError(
                f"could not download weights from {url}: {error}; without a network, copy that file to {target} "
                "or pass a local path as the weights"
            ) from error
    return target


def resolve_weights(weights: str | os.PathLike[str], arch: str) -> Path:
    """A local checkpoint path for a file path, a URL or an official name."""
    text = os.fspath(weights)
    if "://" in text:
        return cached_download(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if path.suffix in (".pth", ".pt", ".safetensors", ".bin") or os.sep in text:
        raise WeightsError(f"weights file {text} does not exist")
    return cached_download(official_url(text, arch))


FILE_KINDS = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image", b"%PDF": "a PDF"}


def load_failure(path: str | os.PathLike[str], error: BaseException) -> str:
    """Why a safe ``torch.load`` of ``path`` failed, in a few words: torch's own message for a refused object
    advises loading with ``weights_only=False``, which this library never does, and for a file that is no
    checkpoint it names an unpickler opcode (``Unsupported operand 255``) or raises a bare ``KeyError``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as unreadable:
        return "it is a folder, not a file" if Path(path).is_dir() else f"it cannot be opened ({unreadable.strerror})"
    if not head:
        return "the file is empty"
    kind = next((name for magic, name in FILE_KINDS.items() if head.startswith(magic)), None)
    if kind:
        return f"it is {kind}, not a checkpoint"
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    if refused and head.startswith((b"PK\x03\x04", b"\x80")):  # text starting with "c" reads as a GLOBAL too
        return (
            f"it holds a Python object ({refused.group(1)}) that a safe load (weights_only=True) refuses to "
            "unpickle; save a state dict of tensors instead"
        )
    if head.startswith(b"PK\x03\x04"):
        return "it is truncated or corrupted, or a zip archive that torch.save did not write"
    if head.startswith(b"\x80"):
        return "it is a pickle that is truncated or holds more than tensors and plain data"
    return "it is not a PyTorch checkpoint (torch.save's zip archive), a pickle of tensors or a safetensors file"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a checkpoint safely and unwrap it to a flat ``name -> tensor`` dict."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt files raise many types; all mean the same to the user
        if path.suffix == ".safetensors":
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        else:
            reason = load_failure(path, error)
        raise WeightsError(f"cannot read weights file {path}: {reason}") from error
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(raw: object, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Remove nesting (``{"state_dict": ...}``, ``{"model": ...}``) and wrapper prefixes."""
    while isinstance(raw, Mapping) and not _is_flat(raw):
        inner = next((raw[k] for k in WRAPPER_KEYS if k in raw and isinstance(raw[k], Mapping)), None)
        if inner is None:
            raise WeightsError(f"{source} holds no state dict (top-level keys: {sorted(raw)[:10]})")
        raw = inner
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{source} holds {type(raw).__name__}, not a state dict")
    state = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _is_flat(raw: Mapping[object, object]) -> bool:
    return any(isinstance(v, Tensor) for v in raw.values())


def load_backbone_weights(
    model: nn.Module,
    weights: str | os.PathLike[str],
    *,
    arch: str,
    first_conv: str = "conv1",
) -> None:
    """Load ``weights`` into a backbone strictly.

    Classifier keys (``fc.*``, ``head.*``) are dropped. Keys that a wrapper shares
    beside the backbone (``backbone.body.`` and ``backbone.`` of detectors) are handled
    by keeping only that part. A first convolution with another input-channel count is
    adapted with timm's rule (summed for 1 channel, repeated and rescaled otherwise).
    Any other missing or unexpected key raises :class:`WeightsError` listing the keys.
    """
    path = resolve_weights(weights, arch)
    state = read_state_dict(path)
    for prefix in ("backbone.body.", "backbone."):  # a detector or task model holding our backbone
        if any(k.startswith(prefix) for k in state) and not any(k.startswith("conv1") for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    own = model.state_dict()
    conv_key = f"{first_conv}.weight"
    if conv_key in state and conv_key in own and state[conv_key].shape[1] != own[conv_key].shape[1]:
        from timm.models import adapt_input_conv

        state[conv_key] = adapt_input_conv(own[conv_key].shape[1], state[conv_key])
    load_strict(model, state, source=str(path))


def load_strict(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with errors that list the keys and shapes."""
    own = model.state_dict()
    ignorable = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in own if k not in state and k not in ignorable)
    unexpected = sorted(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_short(mismatched)}")
    if problems:
        raise WeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"
