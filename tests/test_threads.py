"""tasks.threads: the math's threads and the data workers from the cores, OMP_NUM_THREADS and torchrun."""

from __future__ import annotations

import cv2
import pytest
import torch

from tasks import threads
from tasks.engine import make_loader


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` cores whose torch default is ``default`` threads; no torchrun, no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)

    def make(cores: int, default: int | None = None) -> None:
        monkeypatch.setattr(threads, "usable_cores", lambda: cores)
        monkeypatch.setattr(threads, "DEFAULT_THREADS", default or cores)

    return make


def test_on_a_cpu_the_math_takes_the_cores_and_the_workers_what_it_leaves(machine, monkeypatch) -> None:
    machine(2)
    plan = threads.plan_cores("auto", device="cpu")
    assert (plan.threads, plan.workers) == (2, 0)
    assert plan.line() == (
        "cores: 2 torch thread(s), 0 data worker(s) (2 core(s), 2 for the math, none left: data loads between steps)"
    )
    machine(16, default=8)  # 8 physical cores, 16 logical: torch's default is the physical ones
    assert (threads.plan_cores("auto", device="cpu").threads, threads.plan_cores("auto", device="cpu").workers) == (
        8,
        4,
    )
    assert threads.plan_cores(3, device="cpu").workers == 3  # a number the user set stands
    assert threads.plan_cores("auto", device="cuda").workers == 8  # the math on the GPU: 15 free cores, at most 8


def test_omp_num_threads_and_torchruns_processes_are_respected(machine, monkeypatch) -> None:
    machine(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = threads.plan_cores("auto", device="cpu")
    assert (plan.threads, plan.workers) == (1, 1) and "OMP_NUM_THREADS=1" in plan.reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc-per-node 2 sets OMP_NUM_THREADS=1
    plan = threads.plan_cores("auto", device="cpu")
    assert (plan.threads, plan.workers) == (1, 0)
    monkeypatch.delenv("OMP_NUM_THREADS")
    machine(8)
    plan = threads.plan_cores("auto", device="cpu")
    assert (plan.threads, plan.workers) == (4, 0) and "4 core(s) for each of 2 process(es)" in plan.reason
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a number: as if unset
    assert threads.plan_cores("auto", device="cpu").threads == 4


def test_applying_a_plan_sets_torchs_threads(machine, monkeypatch) -> None:
    monkeypatch.setattr(threads, "ACTIVE", None)  # restored after the test, as torch's threads are
    before = torch.get_num_threads()
    plan = threads.CorePlan(1, 0, "test")
    try:
        threads.apply_plan(plan)
        assert torch.get_num_threads() == 1 and plan == threads.ACTIVE
    finally:
        torch.set_num_threads(before)


def test_more_workers_than_cores_is_said_once_in_the_cores_line(machine, monkeypatch) -> None:
    """torch's DataLoader warned in many lines, at its creation and at each epoch's iterator; the plan's line
    says it instead."""
    import warnings

    machine(2)
    assert "more than" not in threads.plan_cores(2, device="cpu").reason
    plan = threads.plan_cores(4, device="cpu")
    assert plan.line().endswith("(2 core(s); workers set, more than the 2 core(s): expect slower steps)")
    monkeypatch.setattr(threads, "ACTIVE", None)
    before = torch.get_num_threads()
    with warnings.catch_warnings(record=True) as caught:  # restores the filters that apply_plan adds
        warnings.simplefilter("always")
        try:
            threads.apply_plan(plan)
            torch.utils.data.DataLoader(list(range(8)), num_workers=4)
        finally:
            torch.set_num_threads(before)
    assert [str(w.message)[:40] for w in caught] == []


class _OpenCVThreads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return cv2.getNumThreads()


@pytest.mark.skipif(cv2.getNumThreads() < 2, reason="OpenCV already runs one thread on this machine")
def test_data_workers_run_opencv_single_threaded() -> None:
    loader = make_loader(_OpenCVThreads(), batch_size=1, train=False, workers=1, collate_fn=lambda items: items[0])
    assert list(loader) == [1, 1]
    assert cv2.getNumThreads() > 1  # the parent's OpenCV is left as it was
