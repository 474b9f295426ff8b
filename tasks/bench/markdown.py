"""The benchmark document's ``## `` parts: split by title and joined back, for ``--update`` and the Targets part."""

from __future__ import annotations

import re


def split_parts(text: str) -> tuple[str, dict[str, str]]:
    """The text before the first ``## `` title, and each part (title line to the next title) by its title line."""
    head, *parts = re.split(r"(?m)^(?=## )", text)
    return head, {part.splitlines()[0]: part for part in parts}


def join_parts(head: str, parts: list[str]) -> str:
    """``head`` and ``parts`` in order, one blank line between parts, one newline at the end."""
    body = "".join(part if part.endswith("\n\n") else part.rstrip("\n") + "\n\n" for part in parts)
    return head + body.rstrip("\n") + "\n"
