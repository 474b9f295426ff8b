"""Whole-model checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings and lists:
``task``, ``model_args`` (enough to rebuild the model), ``model`` (state dict),
optionally ``ema``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best_metric``
and ``config`` (the resolved config as a dict).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.errors import UserError
from tasks.io import atomic_write


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> Path:
    return atomic_write(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | os.PathLike[str], *, task: str) -> dict[str, Any]:
    """Read a checkpoint of ``task``; anything else is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files and foreign pickles raise many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path} cannot be read safely: {first[:200]}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "task" not in checkpoint:
        raise UserError(f"checkpoint {path} is not a model checkpoint of this library (no 'task' and 'model')")
    if checkpoint["task"] != task:
        raise UserError(f"checkpoint {path} is a '{checkpoint['task']}' model, not a '{task}' model")
    return checkpoint


def load_model(
    path: str | os.PathLike[str], *, task: str, build: Callable[[dict[str, Any]], nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint of ``task`` holds, rebuilt by ``build(model_args)``, with its evaluation
    weights, in eval mode."""
    checkpoint = load_checkpoint(path, task=task)
    model = build(dict(checkpoint["model_args"]))
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
