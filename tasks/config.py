"""Typed configs: dataclass defaults in code, overridden by YAML files, overridden by flags.

Every layer is validated against the dataclass: an unknown key or a value of the wrong
type is a :class:`ConfigError` naming the file (or flag) and the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tasks.errors import UserError
from tasks.io import read_text

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override that does not fit the task's config."""


Auto = Literal["auto"]


@dataclass
class TrainConfig:
    """What the shared engine needs, the same for every task.

    Fields that may be ``auto`` are resolved by :mod:`tasks.recipes` from facts about the run before
    the engine sees them; ``recipe: fixed`` gives them fixed generic values instead.
    """

    recipe: Literal["auto", "fixed"] = "auto"
    epochs: int | Auto = "auto"
    time: str | None = None  # a wall-clock budget ("15m", "1h"): epochs and schedule are fitted to it
    patience: int | None = None  # stop after this many evaluations without a better main metric
    batch_size: int | Auto = 32  # per process; auto: the task's standard batch, smaller for small data
    lr: float | Auto = "auto"
    optimizer: Literal["sgd", "adamw"] | Auto = "auto"
    momentum: float = 0.9
    weight_decay: float | Auto = "auto"
    backbone_lr_scale: float | Auto = "auto"
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float | Auto = "auto"
    step_milestones: list[int] = field(default_factory=list)
    step_gamma: float = 0.1
    min_lr_ratio: float = 0.0
    accumulate: int = 1
    clip_grad: float | None | Auto = "auto"
    # mixed precision; auto: bfloat16 autocast on a CPU with bf16 matrix instructions (AMX or AVX-512 bf16) for inputs
    # of 64 px or more, float16 with a gradient scaler on CUDA, float32 otherwise (tasks.recipes._precision)
    amp: bool | Auto = "auto"
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int | Auto = "auto"  # DataLoader workers; auto: the cores torch's threads leave free (tasks/threads.py)
    cache_mb: int | Auto = "auto"  # decoded images kept in memory, MB in all; auto: 1/8 of the free memory, <= 4096
    channels_last: bool | Auto = "auto"  # NHWC weights and activations; auto: with amp (oneDNN's bf16 kernels need it)
    # torch.compile (Inductor) the backbone in place, for training and evaluation; checkpoints keep their keys.
    # Compiling takes a while once per input shape, so it pays only in runs long enough to repay it
    compile: bool = False
    sync_bn: bool = False  # BatchNorm -> SyncBatchNorm under torchrun (CUDA only: torch's SyncBatchNorm needs GPUs)
    max_iters_per_epoch: int | None = None
    log_every: int = 20
    # last.pt is written after the first epoch, then at most once every this many seconds, and after the last
    # epoch: a 300 MB checkpoint after every 2-second epoch would take a fifth of a short run; 0: every epoch
    checkpoint_seconds: float = 60.0


def unresolved(config: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``config`` still at ``auto`` (a runner must resolve them before training)."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found += unresolved(value, f"{prefix}{f.name}.")
        elif isinstance(value, str) and value == "auto" and "auto" not in _literal_values(type(config), f.name):
            found.append(prefix + f.name)
    return found


def _literal_values(cls: type, name: str) -> tuple[Any, ...]:
    """The plain Literal choices of a field (``device: auto`` is a real choice, not an unresolved one)."""
    hint = typing.get_type_hints(cls)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def packaged_config(name: str) -> Path | None:
    """The packaged YAML ``configs/<name>.yaml`` (``name`` like ``classify/digits``), if it exists."""
    resource = resources.files("configs").joinpath(*f"{name}.yaml".split("/"))
    if not resource.is_file():
        return None
    with resources.as_file(resource) as path:
        return Path(path)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        found = packaged_config(str(path).removesuffix(".yaml"))
        if found is None:
            raise ConfigError(f"config file {path} does not exist")
        path = found
    try:
        data = yaml.safe_load(read_text(path, kind="config file"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def apply(config: T, updates: Mapping[str, Any], *, source: str, prefix: str = "") -> T:
    """A copy of ``config`` with ``updates`` validated and applied (nested mappings recurse)."""
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(type(config))
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown config key '{where}' (valid keys: {', '.join(fields)})")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: '{where}' must be a mapping of keys, got {value!r}")
            changes[key] = apply(current, value, source=source, prefix=f"{where}.")
        else:
            changes[key] = _check(value, hints[key], where, source)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


# The range of numeric fields, by field name in any config section: (lowest, highest, whether lowest is allowed).
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "batch_size": (1, math.inf, True),
    "epochs": (1, math.inf, True),
    "accumulate": (1, math.inf, True),
    "workers": (0, math.inf, True),
    "cache_mb": (0, math.inf, True),
    "max_iters_per_epoch": (1, math.inf, True),
    "patience": (1, math.inf, True),
    "lr": (0, math.inf, False),
    "weight_decay": (0, math.inf, True),
    "momentum": (0, 1, True),
    "warmup_epochs": (0, math.inf, True),
    "clip_grad": (0, math.inf, False),
    "ema_decay": (0, 1, False),
    "backbone_lr_scale": (0, math.inf, True),
    "image_size": (16, 4096, True),
    "crop_size": (16, 4096, True),
    "min_size": (16, 4096, True),
    "max_size": (16, 8192, True),
    "crop_pct": (0, 1, False),
    "checkpoint_seconds": (0, math.inf, True),
    "show_score_thresh": (0, 1, True),
    "box_score_thresh": (0, 1, True),
    "tile_size": (0, 16384, True),
}


def _check(value: Any, hint: Any, where: str, source: str) -> Any:
    ok, converted = _convert(value, hint)
    if not ok:
        raise ConfigError(f"{source}: '{where}' must be {_describe(hint)}, got {value!r}")
    bounds = BOUNDS.get(where.rsplit(".", 1)[-1])
    if bounds is not None and isinstance(converted, (int, float)) and not isinstance(converted, bool):
        low, high, inclusive = bounds
        if not (converted >= low if inclusive else converted > low) or converted > high:
            shown = f"{'≥' if inclusive else '>'} {low:g}" + (f" and ≤ {high:g}" if high != math.inf else "")
            raise ConfigError(f"{source}: '{where}' must be {shown}, got {value!r}")
    return converted


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _convert(value, arg)
            if ok:
                return True, converted
        return False, None
    if hint is type(None):
        return value is None, None
    if origin is Literal:
        return value in args, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, None
        item = args[0] if args else Any
        items = [_convert(v, item) for v in value]
        if not all(ok for ok, _ in items):
            return False, None
        return True, [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    raise TypeError(f"config type {hint!r} is not supported")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if hint is type(None):
        return "null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def parse_set_option(text: str) -> dict[str, Any]:
    """``--set train.ema=true`` as a nested mapping, the value read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return nested_update(key, value)


def nested_update(key: str, value: Any) -> dict[str, Any]:
    """``"train.ema", True`` as ``{"train": {"ema": True}}``."""
    *sections, last = key.split(".")
    nested: dict[str, Any] = {last: value}
    for section in reversed(sections):
        nested = {section: nested}
    return nested


def merge_dicts(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
