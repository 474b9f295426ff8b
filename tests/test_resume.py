"""Exact resume: a run killed (SIGKILL) in the middle of an epoch and resumed ends where the uninterrupted run ends.

A resumed run restarts the epoch it was killed in, from last.pt (written after every epoch): the same sampler
permutation and augmentation stream (both functions of the seed and the epoch with ``--workers 0``), the RNG
states saved after the last evaluation, the optimizer, scheduler and scaler. The killed run is a subprocess
that kills itself (SIGKILL) after a given optimizer step, so where it dies does not depend on the machine's speed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from tasks.data.embedded import shapes_dataset

ROOT = Path(__file__).resolve().parents[1]
KILLER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    from torch.optim.optimizer import register_optimizer_step_post_hook

    task, kill_at, *argv = sys.argv[1:]
    steps = 0

    def hook(optimizer, args, kwargs):
        global steps
        steps += 1
        if steps == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_post_hook(hook)
    sys.exit(importlib.import_module(f"tasks.{task}").main(argv))
    """
)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {
        "classify": make_image_folder(root / "colours", per_class=(8, 2)),  # 24 train images: 3 steps of 8
        "detect": shapes_dataset(root / "shapes", size=64, train_images=6, val_images=2),  # 3 steps of 2
    }


ARGS = {
    "classify": ["--backbone", "resnet18", "--image-size", "32", "--batch-size", "8", "--lr", "0.01"],
    "detect": [
        "--backbone", "resnet18", "--batch-size", "2", "--lr", "0.01",
        "--set", "model.min_size=64", "--set", "model.max_size=64",
    ],
}  # fmt: skip


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_a_run_killed_mid_epoch_and_resumed_ends_where_the_uninterrupted_run_ends(task, datasets, tmp_path) -> None:
    module = __import__(f"tasks.{task}", fromlist=["main"])
    common = ["--data", str(datasets[task]), "--epochs", "3", "--workers", "0", "--seed", "3", *ARGS[task]]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert module.main([*common, "--output", str(whole)]) == 0

    # killed after the 5th optimizer step: epoch 2 (of 3 steps each) is half done, last.pt holds epoch 1
    command = [sys.executable, "-c", KILLER, task, "5", *common, "--output", str(broken), "--resume", "auto"]
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "starting a new run" in killed.stdout
    assert torch.load(broken / "last.pt", weights_only=True)["epoch"] == 0

    assert module.main([*common, "--output", str(broken), "--resume", "auto"]) == 0  # the same command again
    want = torch.load(whole / "last.pt", weights_only=True)
    got = torch.load(broken / "last.pt", weights_only=True)
    assert got["epoch"] == want["epoch"] == 2 and got["best_epoch"] == want["best_epoch"]
    assert got["best_metric"] == pytest.approx(want["best_metric"], abs=1e-6)
    assert got["scheduler"]["last_epoch"] == want["scheduler"]["last_epoch"] == 9
    torch.testing.assert_close(got["model"], want["model"], rtol=1e-5, atol=1e-6)
    states = lambda c: [s for _, s in sorted(c["optimizer"]["state"].items())]  # noqa: E731
    assert len(states(got)) == len(states(want)) > 0
    torch.testing.assert_close(states(got), states(want), rtol=1e-5, atol=1e-6)  # momentum buffers
    assert [g["lr"] for g in got["optimizer"]["param_groups"]] == [g["lr"] for g in want["optimizer"]["param_groups"]]
    torch.testing.assert_close(got["rng"]["torch"], want["rng"]["torch"])


def test_resume_auto_needs_an_output_folder(datasets, capsys) -> None:
    from tasks.classify import main

    assert main(["--data", str(datasets["classify"]), "--resume", "auto", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --resume auto needs --output DIR: the run folder whose last.pt it continues"


def test_the_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    from tasks.data.sampling import EpochSampler

    a, b = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    b.set_epoch(1)  # a fresh sampler (a resumed run) at epoch 1
    assert list(b) == second != first and sorted(second) == list(range(50))
