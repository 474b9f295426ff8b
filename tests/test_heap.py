"""Freed memory kept for the next step (tasks.heap): counted in page faults, which do not depend on the machine's
speed or load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A step's pattern through the C library's own malloc, with no threads and no other allocator in between: 32 blocks
# of 2 MB (16,384 pages in all) allocated, written and freed, twelve times. glibc's own thresholds adapt to the
# blocks (the first round's are mapped, the later ones come from the heap) but then hand the 64 MB back at each
# free, since the adapted trim threshold is twice the block. Prints whether the thresholds were set, then the minor
# page faults of each round after the first, in 4 KB pages (a host whose transparent huge pages are "always" would
# fault 2 MB at a time).
SCRIPT = """
import ctypes, resource, sys
from tasks import heap
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KB pages, whatever the host's transparent huge pages setting
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 2 << 20
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(32)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, *sorted(faults[1:]))
"""


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    """Whether the thresholds were kept, and the median round's page faults (one odd round cannot move it)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env={**environment, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    rounds = [int(n) for n in out[1:]]
    return out[0] == "True", rounds[len(rounds) // 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_not_faulted_in_again_and_a_users_own_setting_stays() -> None:
    kept, faults = _faults("keep")
    if not kept:
        pytest.skip("the C library is not glibc")
    _, default = _faults("default")
    assert faults < 100  # each round reuses what the one before freed: 0 pages with glibc 2.36
    assert default > 8192  # glibc's own thresholds: the 16,384 pages faulted in again, 16,352 with glibc 2.36
    # a user's own malloc setting is left alone, and then the faults are glibc's
    refused, user = _faults("keep", MALLOC_ARENA_MAX="2", MALLOC_TOP_PAD_="0")
    assert not refused and user > 8192
    refused, _ = _faults("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert not refused
