"""The few process-group facts the engine needs, so torchrun/DDP slot in without a second loop.

Single-process runs never touch torch.distributed: every helper degrades to the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only the main process writes checkpoints, logs, images and metrics."""
    return rank() == 0


def setup_from_env(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        # torchrun's env:// store outlives a restart (--max-restarts): keys under one prefix per attempt, so that
        # a restarted rank never reads a peer address that the killed attempt left there (gloo then fails to
        # connect to a dead process: "connectFullMesh failed ... Connection refused").
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            store=dist.PrefixStore(f"attempt{attempt}/", store),
            rank=rank,
            world_size=world_size,
        )
        if rank != 0:
            # rank 0 speaks for all: the data readers' notes once, and the counts it gathers from every rank;
            # errors and warnings still reach stderr from each
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (open for the process's life)


def shutdown(*, wait: bool = False) -> None:
    """Leave the process group, if one was joined. ``wait``: first wait (at most 10 minutes) until every rank
    is done, so that no rank tears its gloo connections down while another still uses them, which can abort a
    process ("terminate called without an active exception") after a run that succeeded."""
    if not is_distributed():
        return
    if wait:
        with contextlib.suppress(RuntimeError):  # a rank is gone: leave anyway
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(minutes=10))
            else:
                dist.barrier()
    dist.destroy_process_group()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (the identity without a process group)."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class ShardSampler(Sampler[int]):
    """Contiguous, unpadded shards for evaluation: every sample is seen exactly once overall,
    so gathered metrics equal a single-process evaluation (DistributedSampler pads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        per_rank = (size + world_size() - 1) // world_size()
        self.start = min(rank() * per_rank, size)
        self.stop = min(self.start + per_rank, size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
