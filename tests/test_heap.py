"""Freed memory kept for the next step (tasks.heap): counted in page faults, which do not depend on the machine's
speed or load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A step's mix of sizes (1, 8, 24 and 4 MB of float32), allocated, written and freed ten times after three warm-up
# rounds; prints whether the thresholds were set and the minor page faults a round.
SCRIPT = """
import resource, sys
import torch
from tasks import heap
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    held = [torch.ones(n) for n in (1 << 18, 1 << 21, 6 << 20, 1 << 20)]
    del held
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults(mode: str, **env: str) -> tuple[bool, float]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env={**environment, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_not_faulted_in_again_and_a_users_own_setting_stays() -> None:
    kept, faults = _faults("keep")
    if not kept:
        pytest.skip("the C library is not glibc")
    _, default = _faults("default")
    assert faults < 50  # every round reuses what the one before freed
    assert default > 500  # glibc's own thresholds: 1,226 a round with glibc 2.36 (24 MB is 6,144 pages)
    # a user's own malloc setting is left alone, and then the faults are glibc's
    refused, user = _faults("keep", MALLOC_ARENA_MAX="2", MALLOC_TOP_PAD_="0")
    assert not refused and user > 500
    refused, _ = _faults("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert not refused
