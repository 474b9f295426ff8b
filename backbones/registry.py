"""The backbone registry: a plain dict filled by a decorator that refuses duplicate names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from backbones.base import Backbone

BuilderT = TypeVar("BuilderT", bound=Callable[..., Backbone])

_BUILDERS: dict[str, Callable[..., Backbone]] = {}


def register_backbone(builder: BuilderT) -> BuilderT:
    """Register ``builder`` under its function name; a second builder of that name is an error."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"backbone {name!r} is already registered by {_BUILDERS[name].__module__}")
    _BUILDERS[name] = builder
    return builder


def registered() -> dict[str, Callable[..., Backbone]]:
    return dict(_BUILDERS)
