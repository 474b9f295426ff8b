"""results.csv and results.png: a training run's epochs at a glance.

One row per epoch: the epoch, the mean of every loss term, the learning rate, images/s, the epoch's seconds and
every scalar metric of its evaluation (nested sections joined with ``/``: ``val/coco/AP``). The file is rewritten
whole and atomically after each epoch, by rank 0 only; a resumed run keeps the rows up to the epoch it resumes
after. results.png draws the loss terms and the headline metrics against the epochs with matplotlib.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.io import atomic_write

CSV_NAME, PNG_NAME = "results.csv", "results.png"
MAX_METRIC_LINES = 8
LEFT_OUT = ("per_class", "confusion", "num_", "support")  # per-class and count columns: in the CSV, not drawn


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    """Every number in ``metrics``, nested sections joined with ``/`` (booleans and None left out)."""
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            yield f"{prefix}{key}", float(value)
        elif isinstance(value, Mapping):
            yield from scalars(value, f"{prefix}{key}/")


class RunLog:
    """The epochs of one run, written to ``run_dir/results.csv`` (and drawn to results.png on :meth:`draw`)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, float]] = []

    def resume(self, epochs_done: int) -> None:
        """Keep the rows of this folder's results.csv up to epoch ``epochs_done`` (a resumed run continues it)."""
        path = self.run_dir / CSV_NAME
        if not path.is_file():
            return
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
        self.rows = [row for row in rows if row.get("epoch", 0) <= epochs_done]

    def add(self, row: Mapping[str, float]) -> Path:
        """Append one epoch's row and rewrite results.csv."""
        self.rows.append(dict(row))
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({key: _number(row[key]) if key in row else "" for key in columns})
        data = text.getvalue().encode("utf-8")
        return atomic_write(self.run_dir / CSV_NAME, lambda handle: handle.write(data))

    def draw(self, main_metric: str, headlines: Sequence[str] = ()) -> Path | None:
        """results.png: the loss terms (left) and the headline metrics (right) against the epochs: the main
        metric, then ``headlines`` (dotted keys, as ``main_metric``), then the others in the CSV's order, up to
        :data:`MAX_METRIC_LINES` lines."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator

        epochs = [row["epoch"] for row in self.rows]
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        losses = [c for c in columns if c.startswith("train/")]
        metrics = [c for c in columns if c.startswith("val/") and not any(part in c for part in LEFT_OUT)]
        first = [f"val/{key.replace('.', '/')}" for key in (main_metric, *headlines)]
        first = [c for c in dict.fromkeys(first) if c in metrics]
        metrics = first + [c for c in metrics if c not in first]
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for axes, names, title in ((left, losses, "training loss"), (right, metrics[:MAX_METRIC_LINES], "validation")):
            for name in names:
                points = [(e, row[name]) for e, row in zip(epochs, self.rows) if name in row]
                axes.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=name.split("/", 1)[1])
            axes.set_title(title)
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
            axes.grid(alpha=0.3)
            if names:
                axes.legend(fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        return atomic_write(self.run_dir / PNG_NAME, lambda handle: handle.write(buffer.getvalue()))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else f"{value:.6g}"
