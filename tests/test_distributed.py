"""torchrun on the CPU (gloo): training finishes, and 1- and 2-process evaluation give the same metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.data.embedded import shapes_dataset
from tests.conftest import make_image_folder

pytestmark = pytest.mark.slow


def torchrun(processes: int, *args: str, cwd) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _numbers(metrics, prefix: str = "") -> dict[str, float]:
    """Every number of a nested metrics section by its dotted key (absent values as -1)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) or value is None:
            out[prefix + key] = -1.0 if value is None else float(value)
    return out


def _metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_classify_under_torchrun_and_evaluation_independent_of_process_count(tmp_path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=(7, 5))  # 15 val images
    # 21 readable and 3 unreadable training files: 12 a process, 3 batches of 4, none dropped; each unreadable file
    # skipped on whichever process the sampler gives it to
    for name in ("red/broken.png", "green/broken.png", "blue/empty.png"):
        (data / "train" / name).write_bytes(b"" if "empty" in name else b"\x89PNG\r\n\x1a\n not really")
    (data / "val" / "green" / "broken.png").write_bytes(b"")  # 16 val files, 15 readable: shards of 8 and 8
    (data / "val").rename(data / "valid")  # Roboflow's name: a data reader's note, said by rank 0 alone
    common = ["--data", str(data), "--backbone", "resnet18", "--workers", "0", "--device", "cpu", "--image-size", "32"]
    train = tmp_path / "train"
    result = torchrun(
        2, "-m", "tasks.classify", *common, "--epochs", "1", "--batch-size", "4", "--output", str(train), cwd=tmp_path
    )
    assert "1 classes" not in result.stdout and (train / "best.pt").is_file() and (train / "last.pt").is_file()
    # the counts are every process's, said once by the first
    assert result.stdout.count("skipped 3 unreadable image(s) in epoch 1") == 1
    assert result.stdout.count("skipped 1 unreadable validation image(s); the metrics are over the 15 read") == 1
    assert result.stdout.count("has no 'val' split: evaluating on its 'valid' split") == 1
    assert not list(tmp_path.glob("runs"))  # every rank used the given folder
    one, two = tmp_path / "eval1", tmp_path / "eval2"
    torchrun(
        1,
        "-m",
        "tasks.classify",
        "eval",
        "--checkpoint",
        str(train / "best.pt"),
        *common,
        "--output",
        str(one),
        cwd=tmp_path,
    )
    torchrun(
        2,
        "-m",
        "tasks.classify",
        "eval",
        "--checkpoint",
        str(train / "best.pt"),
        *common,
        "--output",
        str(two),
        cwd=tmp_path,
    )
    a, b = _metrics(one), _metrics(two)
    assert a["num_samples"] == b["num_samples"] == 15
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["accuracy"] == b["accuracy"]
    # --resume with another number of processes: one epoch on two processes, the second on one.
    result = torchrun(
        1, "-m", "tasks.classify", *common, "--epochs", "2", "--batch-size", "4",
        "--resume", str(train / "last.pt"), "--output", str(train), cwd=tmp_path,
    )  # fmt: skip
    assert "resumed from" in result.stdout and "epoch 2/2" in result.stdout
    import torch

    assert torch.load(train / "last.pt", weights_only=True)["epoch"] == 1  # the second epoch (0-based) is done


def test_detect_under_torchrun_and_evaluation_independent_of_process_count(tmp_path) -> None:
    data = shapes_dataset(tmp_path / "shapes", size=64, train_images=4, val_images=5)
    size = ["--set", "model.min_size=64", "--set", "model.max_size=64", "--set", "model.box_score_thresh=0.0"]
    common = ["--data", str(data), "--backbone", "resnet18", "--workers", "0", "--device", "cpu", *size]
    train = tmp_path / "train"
    torchrun(
        2, "-m", "tasks.detect", *common, "--epochs", "1", "--batch-size", "2", "--output", str(train), cwd=tmp_path
    )
    one, two = tmp_path / "eval1", tmp_path / "eval2"
    torchrun(
        1,
        "-m",
        "tasks.detect",
        "eval",
        "--checkpoint",
        str(train / "best.pt"),
        *common,
        "--output",
        str(one),
        cwd=tmp_path,
    )
    torchrun(
        2,
        "-m",
        "tasks.detect",
        "eval",
        "--checkpoint",
        str(train / "best.pt"),
        *common,
        "--output",
        str(two),
        cwd=tmp_path,
    )
    # Shards batch the images differently (4 + 1 against 3 and 2), and oneDNN's kernels for another batch size
    # may move a score by one float ulp, which can flip its 5th rounded decimal: scores agree to 2e-5, the
    # detections per image and class exactly.
    a, b = _metrics(one), _metrics(two)
    assert _numbers(a["coco"]) == pytest.approx(_numbers(b["coco"]), abs=1e-3)
    assert _numbers(a["voc"]) == pytest.approx(_numbers(b["voc"]), abs=1e-3)

    def by_image(folder) -> dict:
        grouped: dict = {}
        for p in json.loads((folder / "predictions.json").read_text()):
            grouped.setdefault((p["image_id"], p["category_id"]), []).append(p["score"])
        return {key: sorted(scores) for key, scores in grouped.items()}

    first, second = by_image(one), by_image(two)
    assert first.keys() == second.keys() and len(first) > 0
    for key, scores in first.items():
        assert scores == pytest.approx(second[key], abs=2e-5), key


@pytest.mark.parametrize("task", ["segment", "multitask"])
def test_segment_and_multitask_evaluation_independent_of_process_count(task, tmp_path) -> None:
    """Trained in one process, evaluated with 1 and 2: the same metrics (5 val images: shards of 3 and 2)."""
    import importlib

    data = shapes_dataset(tmp_path / "shapes", size=64, train_images=12, val_images=5)  # every class in train
    common = ["--data", str(data), "--backbone", "resnet18", "--workers", "0", "--device", "cpu"]
    extra = ["--image-size", "64"]
    train = tmp_path / "train"
    main = importlib.import_module(f"tasks.{task}").main
    assert main([*common, *extra, "--epochs", "1", "--batch-size", "2", "--output", str(train)]) == 0
    results = []
    for processes in (1, 2):
        out = tmp_path / f"eval{processes}"
        torchrun(processes, "-m", f"tasks.{task}", "eval", "--checkpoint", str(train / "best.pt"), *common,
                 "--output", str(out), cwd=tmp_path)  # fmt: skip
        results.append(_numbers(_metrics(out)))
    one, two = results
    assert one.keys() == two.keys() and len(one) > 5
    # detection scores may move by a float ulp with another batching (see the detection test above)
    assert one == pytest.approx(two, abs=1e-3)
    exact = [key for key in one if "coco" not in key and "voc" not in key and "detect" not in key]
    assert exact and all(one[key] == pytest.approx(two[key], abs=1e-9) for key in exact), exact


RESTART_KILLER = """
import importlib, os, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook

task, kill_at, *argv = sys.argv[1:]
steps = 0

def hook(optimizer, args, kwargs):
    global steps
    steps += 1
    if steps == int(kill_at) and os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)

register_optimizer_step_post_hook(hook)
sys.exit(importlib.import_module(f"tasks.{task}").main(argv))
"""


def test_torchrun_max_restarts_recovers_a_killed_worker_with_resume_auto(tmp_path) -> None:
    """2 processes on gloo; rank 1 kills itself (SIGKILL) after its 5th optimizer step in the first attempt only,
    half-way through epoch 2. torchrun restarts the group, ``--resume auto`` continues from last.pt (epoch 1),
    and the run ends with the weights, optimizer state and metrics of a run that was never killed."""
    import torch

    data = make_image_folder(tmp_path / "data", per_class=(8, 2))  # 24 train images: 12 a rank, 3 steps of 4
    common = [
        "--data", str(data), "--backbone", "resnet18", "--workers", "0", "--device", "cpu", "--image-size", "32",
        "--epochs", "3", "--batch-size", "4", "--lr", "0.01", "--seed", "3",
    ]  # fmt: skip
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    torchrun(2, "-m", "tasks.classify", *common, "--output", str(whole), cwd=tmp_path)

    killer = tmp_path / "killer.py"
    killer.write_text(RESTART_KILLER, encoding="utf-8")
    result = torchrun(
        2, "--max-restarts=1", str(killer), "classify", "5", *common, "--output", str(broken), "--resume", "auto",
        cwd=tmp_path,
    )  # fmt: skip
    # the first attempt started fresh; the second, restarted by torchrun, resumed from the first's epoch 1
    assert "starting a new run" in result.stdout and "resumed from" in result.stdout, result.stdout[-3000:]

    want = torch.load(whole / "last.pt", weights_only=True)
    got = torch.load(broken / "last.pt", weights_only=True)
    assert got["epoch"] == want["epoch"] == 2 and got["scheduler"]["last_epoch"] == want["scheduler"]["last_epoch"]
    torch.testing.assert_close(got["model"], want["model"], rtol=1e-5, atol=1e-6)
    states = lambda c: [s for _, s in sorted(c["optimizer"]["state"].items())]  # noqa: E731
    assert len(states(got)) == len(states(want)) > 0
    torch.testing.assert_close(states(got), states(want), rtol=1e-5, atol=1e-6)
    a, b = _numbers(_metrics(whole)), _numbers(_metrics(broken))
    assert a.keys() == b.keys() and a == pytest.approx(b, abs=1e-6)
