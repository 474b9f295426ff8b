"""How a run spends the machine's cores: torch's intra-op threads and the DataLoader's worker processes.

On a CPU the convolutions already use every core; DataLoader workers, and the OpenCV threads that albumentations
starts inside each of them, then compete with the math for the same cores. Two runs side by side on 2 cores, each
with 2 threads and 2 workers, trained a resnet18 U-Net at 1.4 images/s each, where one thread alone on one core did
4.1. So the math gets the cores of this process's share (the machine's cores divided among torchrun's processes on
this node, or ``OMP_NUM_THREADS`` where it is set, as torchrun sets it to 1), the workers get what it leaves, and
every worker runs OpenCV single-threaded, as albumentations advises.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

MAX_CPU_WORKERS = 4
MAX_CUDA_WORKERS = 8
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at import (its physical cores, or OMP_NUM_THREADS)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this run on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer, or None where it is unset or not one."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


@dataclass(frozen=True)
class CorePlan:
    threads: int  # torch's intra-op threads in this process
    workers: int  # DataLoader worker processes
    reason: str
    oversubscribed: bool = False  # workers set above the cores of this process's share

    def line(self) -> str:
        return f"cores: {self.threads} torch thread(s), {self.workers} data worker(s) ({self.reason})"


def plan_cores(workers: int | str, *, device: str) -> CorePlan:
    """The threads and workers of one process. ``workers``: a number the user set, or ``"auto"``: on a CPU, the
    cores of this process's share that its threads leave free (none on a machine whose cores the math fills: the
    data then loads between steps, in this process); on CUDA, all but one of its share, at most 8."""
    processes = local_processes()
    share = max(usable_cores() // processes, 1)
    omp = omp_threads()
    if omp is not None:
        threads, why = omp, f"OMP_NUM_THREADS={omp}"
    else:
        threads = max(min(DEFAULT_THREADS, usable_cores()) // processes, 1)
        why = f"{share} core(s) for each of {processes} process(es)" if processes > 1 else f"{share} core(s)"
    if workers != "auto":
        over = int(workers) > share
        note = f", more than the {share} core(s): expect slower steps" if over else ""
        return CorePlan(threads, int(workers), f"{why}; workers set{note}", oversubscribed=over)
    if device == "cuda":
        chosen = min(max(share - 1, 1), MAX_CUDA_WORKERS)
        return CorePlan(threads, chosen, f"{why}; the math runs on the GPU")
    free = max(share - threads, 0)
    chosen = min(free, MAX_CPU_WORKERS)
    left = f"{free} left for data" if free else "none left: data loads between steps"
    return CorePlan(threads, chosen, f"{why}, {threads} for the math, {left}")


ACTIVE: CorePlan | None = None  # the plan in force in this process, as torch's thread count is process-wide


def apply_plan(plan: CorePlan) -> None:
    """Set torch's intra-op threads of this process to the plan's, and record the plan as the active one."""
    global ACTIVE
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    if plan.oversubscribed:  # the cores line says so once; torch's DataLoader would warn each epoch
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    ACTIVE = plan


def quiet_worker() -> None:
    """In a DataLoader worker: OpenCV single-threaded (torch already runs one thread in each worker)."""
    try:
        import cv2
    except ImportError:  # albumentations brings OpenCV; without it there is nothing to quiet
        return
    cv2.setNumThreads(0)
