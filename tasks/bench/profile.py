"""``python -m tasks.bench.profile``: where a task recipe's training step spends its time, by operator.

    python -m tasks.bench.profile --task detect              # the main job's detector, as the recipe trains it
    python -m tasks.bench.profile --task detect --no-amp     # the same step in float32 NCHW

Runs the packaged recipe's model, loss and optimizer (``python -m tasks.<task>`` with no ``--data``), with the
backbone of its row in the training table (``python -m tasks.bench training``), on its built-in data under
``torch.profiler`` for a few steps after warm-up ones, and prints the operators with the most self CPU time (their
children excluded) as a Markdown table: milliseconds a step, share, calls a step.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def profile_training(
    task: str,
    *,
    steps: int = 5,
    warmup: int = 3,
    top: int = 10,
    amp: bool | None = None,
    overrides: Sequence[str] = (),
) -> tuple[float, list[dict[str, Any]], str]:
    """The profiled milliseconds of one step, the ``top`` operators by self CPU time, and the precision it ran in.
    ``amp``: the recipe's precision and memory format where None, else bfloat16 channels-last (True) or float32
    NCHW (False)."""
    from torch.profiler import ProfilerActivity, profile

    from tasks import bench
    from tasks.errors import UserError

    if steps < 1 or warmup < 0 or top < 1:
        raise UserError(f"--steps and --top must be 1 or more, --warmup 0 or more (now {steps}, {top}, {warmup})")

    cfg, parts = bench._runner_setup(task, overrides)  # the training table's model, unless an override names another
    bf16 = bool(cfg.train.amp) if amp is None else amp
    channels_last = bool(cfg.train.channels_last) if amp is None else amp
    batches = bench.first_batches(parts, warmup + steps)
    if len(batches) < warmup + steps:
        raise UserError(
            f"--steps {steps} with --warmup {warmup} needs {warmup + steps} batches, and {task}'s built-in data holds "
            f"{len(batches)}: use fewer steps"
        )
    step = bench.training_stepper(parts, cfg.train, amp=bf16, channels_last=channels_last)

    for batch in batches[:warmup]:
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        for batch in batches[warmup:]:
            step(batch)
    events = list(recorded.key_averages())
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        dict(
            operator=e.key,
            ms_per_step=e.self_cpu_time_total / steps / 1000,
            share=e.self_cpu_time_total / max(total, 1e-9),
            calls_per_step=e.count / steps,
        )
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    ]
    return total / steps / 1000, rows, "bfloat16" if bf16 else "float32"


def markdown(step_ms: float, rows: Sequence[dict[str, Any]], precision: str) -> str:
    lines = [
        f"| operator ({precision} step, {step_ms:.0f} ms) | ms/step | share | calls/step |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{r['operator']}` | {r['ms_per_step']:.1f} | {r['share']:.1%} | {r['calls_per_step']:g} |" for r in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.cli import run

    def _main(argv: Sequence[str] | None) -> int:
        from tasks.cli import ArgumentParser

        parser = ArgumentParser(prog="python -m tasks.bench.profile", description=__doc__.splitlines()[0])
        parser.add_argument("--task", choices=("classify", "detect", "segment", "multitask"), default="detect")
        parser.add_argument("--steps", type=int, default=5)
        parser.add_argument("--warmup", type=int, default=3)
        parser.add_argument("--top", type=int, default=10)
        parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="default: the recipe's")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
        args = parser.parse_args(argv)
        step_ms, rows, precision = profile_training(
            args.task, steps=args.steps, warmup=args.warmup, top=args.top, amp=args.amp, overrides=args.set
        )
        print(markdown(step_ms, rows, precision))
        return 0

    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
