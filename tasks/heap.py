"""Freed memory kept in the process for the next step, instead of handed back to the kernel (glibc's malloc).

A training step frees and allocates the same hundreds of megabytes of activations and gradients every step. glibc's
malloc hands the free memory at the top of its heap back to the kernel once more than its trim threshold is free,
and serves large blocks from mappings that it unmaps when they are freed. Its defaults adapt both thresholds as a
program runs, but not to a training step's mix of sizes: each step faulted the same memory back in, page by page,
zeroed by the kernel. On the recipes' CPU steps that was 6,000-18,000 minor page faults and 14-35 ms of system time
a step; without them the steps took 0.80-1.00 of their time (docs/results.md, "Freed memory kept for the next
step").

:func:`keep_freed_memory` fixes both thresholds with ``mallopt``, as the ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` variables would: up to :data:`TRIM_THRESHOLD` of free memory stays in the process, and
blocks up to glibc's largest mapping threshold come from the heap. The process's resident memory then stays near
its peak rather than falling between steps. Where the user set glibc's malloc variables or tunables, or the C
library is not glibc, nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30  # free memory the heap keeps before it hands any back
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: larger blocks are still mapped and unmapped each time
USER_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_kept = False


def user_settings() -> bool:
    """Whether the environment sets glibc's malloc thresholds itself (its variables, or ``glibc.malloc``
    tunables): those stay as the user set them."""
    return any(name in os.environ for name in USER_VARIABLES) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mapping thresholds for this process (and the DataLoader workers it forks later), once;
    True where they are in force. False where the user set them, or the C library has no ``mallopt`` (not Linux,
    or musl), and then nothing changes."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux") or user_settings():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _kept = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _kept
