"""Renaming another library's checkpoint keys to ours, prefix by prefix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor


def rename_prefixes(state: Mapping[str, Tensor], prefixes: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Each key starting with an ``old`` prefix gets ``new`` in its place (the first match wins);
    other keys are kept as they are."""
    out = {}
    for key, value in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            out[key] = value
    return out
