"""The benchmark document's ``## `` parts: split by title and joined back, for ``--update`` and the Targets part,
and each part's last line (its day, CPU and float32 ceiling), written and read here alone."""

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


# The training table's column: a loop's GFLOP/s over the ceiling timed in its own rounds (the Targets part reads it)
ROUND_SHARE = "of the ceiling in its rounds"


# The last line of a part names the float32 ceiling its "of peak" divides by: one CPU model name covers machines of
# twice the speed (docs/results.md, "The benchmarks on two AVX-512 hosts"), so the name alone cannot tell whether an
# --update mixed machines. Lines written before the ceiling was named end at the CPU.
_FOOTER = re.compile(r"_This part took [^,]*, on ([^,]+), (.+?)(?:; float32 ceiling ([\d.]+) GFLOP/s)?\._\s*$")


def footer_line(seconds: float, day: str, cpu: str, ceiling: float) -> str:
    """A part's last line ("_This part took 1.5 min, on 2026-12-06, AMD EPYC (AVX2); float32 ceiling 107.9
    GFLOP/s._"), which :func:`part_footer` reads back."""
    return f"_This part took {seconds / 60:.1f} min, on {day}, {cpu}; float32 ceiling {ceiling:.1f} GFLOP/s._"


def part_footer(part: str) -> tuple[str, str, float | None] | None:
    """The day, CPU and float32 ceiling (None where the line names none) of a part's last line; None where the
    part has no such line (the Machine, Summary and Targets parts)."""
    match = _FOOTER.search(part.strip())
    if match is None:
        return None
    day, cpu, ceiling = match.groups()
    return day, cpu, float(ceiling) if ceiling is not None else None
