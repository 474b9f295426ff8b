"""The Targets section of docs/benchmarks.md: the speed issue's goals against the document's own tables.

Nothing is measured here. :func:`targets_section` reads the tables that the benchmarks wrote (Backbone, Detector,
Training) and says, for each goal, what was measured, whether it is met, and where docs/results.md tells what was
tried where it is not. ``python -m tasks.bench`` writes it after every run that produces the whole document, and
after every ``--update``; ``python -m tasks.bench --targets`` rewrites it alone from the tables already there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tasks.bench.markdown import ROUND_SHARE, join_parts, part_footer, split_parts

TITLE = "## Targets"


@dataclass(frozen=True)
class Goal:
    what: str
    bound: float  # a ratio (speed: at least), a fraction of the ceiling (at least) or of the step (at most)
    tried: str  # where docs/results.md tells what was tried
    at_most: bool = False
    best_only: bool = False  # over several forms of one model: the best must meet it (else every row must)


GOALS = {
    "train": Goal(
        "training: every task's recipe step at least 1.25× a bare PyTorch loop",
        1.25,
        tried='"Mixed precision on the CPU", "The detector in channels-last" (float32 on AVX2: level with the bare '
        'loop; the profile), "Cores", "The bare loop\'s divergence" (the detector\'s bare loop had timed NaN steps; '
        'clipped, detect 1.43×; torch.compile\'s break-even), "Three runs of the training table in one day" (classify '
        "1.19-1.49×)",
    ),
    "peak": Goal(
        "training: detect and segment at least 60% of the float32 ceiling",
        0.60,
        tried='"Where the detector\'s training step spends its time" (the profile: convolutions, RoIAlign backward), '
        '"The same goals on an Intel Xeon with AMX" (small convolutions), "The benchmarks re-run on the Intel Xeon '
        'with AMX" (detect 55%, segment 114% on the AMD EPYC), "The split RoIAlign\'s own OpenMP threads" (31% to '
        '39%), "The main job at batch 8" (40% to 58%; RoIAlign\'s backward a fifth of the step), "The two goals '
        'still open: what else was tried" (torchvision\'s tensor-operation RoIAlign, the casts, denormals), "The '
        'bare loop\'s divergence" (47% on an AMD EPYC with Zen 5, in a slow spell), "The ceiling timed in each '
        "round\" (each round's own ceiling; on the AMD EPYC with Zen 5 detect read 48-65% over runs: met in "
        "quiet spells only)",
    ),
    "wait": Goal(
        "training: waiting for data at most 2% of the step",
        0.02,
        at_most=True,
        tried='"The classification recipe\'s wait for data" (a prefetch thread, the batch normalised at once), "The '
        'benchmarks re-run on the Intel Xeon with AMX" (segment\'s pipeline, image by image), "The two goals still '
        "open: what else was tried\" (the pipeline step by step: albumentations' calls per image)",
    ),
    "detector train": Goal(
        "Faster R-CNN train step at least 1.1× torchvision's",
        1.10,
        tried='"Where the detector\'s training step spends its time", "The detector in channels-last"',
        best_only=True,
    ),
    "detector inference": Goal(
        "Faster R-CNN inference at least 1.2× torchvision's",
        1.20,
        tried='"The detector in channels-last", "The benchmarks on two AVX-512 hosts" (the reference\'s share of the '
        'ceiling), "oneDNN\'s fused convolutions without TorchScript" (1.48-1.55× in a three-form run), "The '
        'benchmarks re-run on the Intel Xeon with AMX" (1.15× on the AMD EPYC)',
        best_only=True,
    ),
    "best inference": Goal(
        "best inference mode at least 1.5× torchvision's eager ResNet-50",
        1.50,
        tried='"The best inference mode: Inductor\'s C++ wrapper", "The benchmarks on two AVX-512 hosts" (the bound '
        'that the reference\'s share of the ceiling sets), "oneDNN\'s fused convolutions without TorchScript", "The '
        'benchmarks re-run on the Intel Xeon with AMX" (1.29× on the AMD EPYC), "Notes on the benchmark numbers"',
        best_only=True,
    ),
}


def _table(part: str) -> list[dict[str, str]]:
    """The first Markdown table of a part, as one dict per row keyed by the header."""
    lines = [line for line in part.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return []
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header = cells[0]
    return [dict(zip(header, row, strict=False)) for row in cells[2:]]


def _number(text: str) -> float | None:
    """``1.36×`` -> 1.36, ``7.7%`` -> 0.077, ``60% (50-64%)`` (a median and its range) -> 0.6, ``—`` or anything
    else -> None."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([×%]?)\s*(?:\([^()]*\)\s*)?", text or "")
    if match is None:
        return None
    value = float(match.group(1))
    return value / 100 if match.group(2) == "%" else value


def _footer(part: str) -> str:
    """The day and CPU from a part's last line (:func:`tasks.bench.markdown.part_footer`)."""
    footer = part_footer(part)
    return f"{footer[0]}, {footer[1]}" if footer else ""


def _section(parts: dict[str, str], prefix: str) -> str:
    return next((part for title, part in parts.items() if title.startswith(prefix)), "")


def _fmt(value: float, goal: Goal) -> str:
    return f"{value:.2f}×" if goal.bound > 1 else f"{value:.1%}" if goal.at_most else f"{value:.0%}"


def _judge(goal: Goal, measured: list[tuple[str, float]]) -> tuple[str, str]:
    """(measured text, verdict): every named value must meet the goal, or for ``goal.best_only`` the best one."""
    if not measured:
        return "not in this document", "not measured"
    text = ", ".join(f"{name} {_fmt(value, goal)}" for name, value in measured)

    def ok(value: float) -> bool:
        return value <= goal.bound if goal.at_most else value >= goal.bound

    if goal.best_only:
        name, value = (min if goal.at_most else max)(measured, key=lambda item: item[1])
        return text, "met" if ok(value) else f"not met: the best, {name}, is {_fmt(value, goal)}"
    short = [f"{name} {_fmt(value, goal)}" for name, value in measured if not ok(value)]
    return text, "met" if not short else "not met: " + ", ".join(short)


def _rows_of(table: list[dict[str, str]], **match: str) -> list[dict[str, str]]:
    """The rows whose cells start with the given texts."""
    return [row for row in table if all(row.get(key, "").startswith(value) for key, value in match.items())]


def measured(document: str) -> list[tuple[str, str, str, str, str]]:
    """(goal, measured, verdict, measured on, where results.md tells what was tried) for every goal."""
    _, parts = split_parts(document)
    training = _section(parts, "## Training")
    engine = [row for row in _table(training) if row.get("loop") == "our engine"]

    def task(row: dict[str, str]) -> str:
        return row.get("recipe", "").split(":")[0]

    def task_and_precision(row: dict[str, str]) -> str:
        return f"{task(row)} ({row.get('precision', '')})"

    def values(
        rows: list[dict[str, str]], name: Callable[[dict[str, str]], str], column: str
    ) -> list[tuple[str, float]]:
        found = [(name(row), _number(row.get(column, ""))) for row in rows]
        return [(label, value) for label, value in found if value is not None]

    detector = _section(parts, "## Detector")
    backbone = _section(parts, "## Backbone")
    detector_rows = _table(detector)
    speed = "speed vs torchvision"
    # the share of the ceiling timed in the loop's own rounds where the table has it; else the run's best ceiling
    peak_column = ROUND_SHARE if any(ROUND_SHARE in row for row in engine) else "of peak"
    found = {  # each goal's values, and the part they come from
        "train": (values(engine, task_and_precision, "speed vs bare loop"), training),
        "peak": (values([r for r in engine if task(r) in ("detect", "segment")], task, peak_column), training),
        "wait": (values(engine, task, "waiting for data"), training),
        "detector train": (
            values(_rows_of(detector_rows, step="train step", candidate="ours"), _candidate, speed),
            detector,
        ),
        "detector inference": (
            values(_rows_of(detector_rows, step="inference", candidate="ours"), _candidate, speed),
            detector,
        ),
        "best inference": (
            values(_rows_of(_table(backbone), step="forward", candidate="ours (best"), _candidate, "ratio"),
            backbone,
        ),
    }
    rows = []
    for key, goal in GOALS.items():
        values_found, part = found[key]
        rows.append((goal.what, *_judge(goal, values_found), _footer(part), goal.tried))
    return rows


def _candidate(row: dict[str, str]) -> str:
    return row.get("candidate", "")


def targets_section(document: str) -> str:
    """The Targets part, from ``document``'s tables."""
    rows = measured(document)
    lines = [
        "| goal | measured | verdict | measured on | more in docs/results.md |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    gpu = any(title.startswith("## GPU") for title in split_parts(document)[1])
    return (
        f"{TITLE}\n\n"
        "The speed issue's goals, read from the tables below (`tasks/bench/targets.py`; nothing is measured for this "
        "part). A goal over several rows must hold for each (training); over several forms of one model, for the "
        "best (each form is named). The last column names the sections of [results.md](results.md) that say what "
        "was tried, with the profile, and what the same goal measured on other CPUs. The parts may come from "
        "different runs and CPUs: the column before it says which. The main job's time to accuracy is in "
        'results.md too ("The default jobs in both precisions").\n\n'
        + "\n".join(lines)
        + "\n\n"
        + (
            ""
            if gpu
            else "The GPU goals (the training rows with AMP and channels-last, the detector and export benchmarks on "
            "CUDA, against NVIDIA's and detectron2's published figures) have no table: no GPU was present.\n\n"
        )
    )


def with_targets(document: str) -> str:
    """``document`` with its Targets part (re)written from its tables, right after the Summary."""
    head, by_title = split_parts(document)
    parts = [part for title, part in by_title.items() if title != TITLE]
    at = next((i + 1 for i, part in enumerate(parts) if part.startswith("## Summary")), 0)
    parts.insert(at, targets_section(head + "".join(parts)))
    return join_parts(head, parts)
