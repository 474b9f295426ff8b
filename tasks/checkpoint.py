"""Whole-model checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings and lists:
``format_version``, ``task``, ``model_args`` (enough to rebuild the model), ``model`` (state dict),
``class_names`` and the task's own entries (``image_size`` ...), optionally ``ema``, ``optimizer``,
``scheduler``, ``scaler``, ``epoch``, ``best_metric`` and ``config`` (the resolved config as a dict).

``format_version`` changes when that layout does, so that a checkpoint from another version of the library is
one line saying which format it has and which this version reads, never a TypeError or KeyError. Checkpoints
written before the field existed have the layout of version 1 and are read as such.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.weights import load_failure
from tasks.errors import UserError
from tasks.io import atomic_write

FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
# What each task's commands read from a checkpoint besides model_args and model.
REQUIRED = {
    "classify": ("class_names", "image_size", "crop_pct"),
    "detect": ("class_names",),
    "segment": ("class_names",),
    "multitask": ("class_names", "image_size"),
}


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> Path:
    checkpoint = {"format_version": FORMAT_VERSION, **checkpoint}
    return atomic_write(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | os.PathLike[str], *, task: str) -> dict[str, Any]:
    """Read a checkpoint of ``task``; anything else is a one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        inside = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        hint = f": name the checkpoint in it ({' or '.join(str(path / n) for n in inside)})" if inside else ""
        raise UserError(f"checkpoint {path} is a folder{hint}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files and foreign pickles raise many types
        raise UserError(f"checkpoint {path} cannot be read safely: {load_failure(path, error)}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "task" not in checkpoint:
        raise UserError(f"checkpoint {path} is not a model checkpoint of this library (no 'task' and 'model')")
    version = checkpoint.get("format_version", 1)
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise UserError(
            f"checkpoint {path} has format version {version!r} (another version of this library wrote it); "
            f"this version reads format {readable}"
        )
    if checkpoint["task"] != task:
        raise UserError(f"checkpoint {path} is a '{checkpoint['task']}' model, not a '{task}' model")
    missing = [key for key in ("model_args", *REQUIRED.get(task, ())) if key not in checkpoint]
    if missing or not isinstance(checkpoint["model"], dict) or not isinstance(checkpoint.get("model_args"), dict):
        what = f"has no {', '.join(missing)}" if missing else "has a malformed model or model_args entry"
        raise UserError(f"checkpoint {path} {what}: it is not a complete '{task}' checkpoint of this version")
    outputs, names = checkpoint["model_args"].get("num_classes"), checkpoint.get("class_names")
    if isinstance(outputs, int) and isinstance(names, list):
        expected = len(names) + 1 if task == "detect" else len(names)  # the detector's class 0 is background
        if outputs != expected:
            raise UserError(f"checkpoint {path} has {len(names)} class names for a model of {outputs} outputs")
    return checkpoint


def load_model(
    path: str | os.PathLike[str], *, task: str, build: Callable[[dict[str, Any]], nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint of ``task`` holds, rebuilt by ``build(model_args)``, with its evaluation
    weights, in eval mode."""
    checkpoint = load_checkpoint(path, task=task)
    try:
        model = build(dict(checkpoint["model_args"]))
    except (TypeError, KeyError, ValueError) as error:  # arguments another version wrote, or left out
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"checkpoint {path} holds model arguments this version cannot build from: {first}") from None
    try:
        model.load_state_dict(evaluation_weights(checkpoint))
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit its own model: {str(error).splitlines()[0]}") from None
    return model.eval(), checkpoint


def evaluation_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to evaluate or predict with: the EMA copy when training kept one."""
    return checkpoint.get("ema") or checkpoint["model"]


def check_num_classes(checkpoint: dict[str, Any], num_classes: int, *, path: str | os.PathLike[str]) -> None:
    have = checkpoint.get("model_args", {}).get("num_classes")
    if have is not None and have != num_classes:
        raise UserError(f"checkpoint {path} has {have} classes but the data has {num_classes}")
