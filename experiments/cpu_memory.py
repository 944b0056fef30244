"""Keep freed memory inside the process on CPU runs, so that training steps stop page-faulting.

A ResNet20 step at batch 128 frees and re-allocates about 100 MB of activations and gradients.
With glibc's default settings much of that goes back to the kernel after every step and comes back
as fresh pages that fault on first touch: up to 16,000 minor page faults per step, up to 7% of
the step's time on a 2-core CPU (results/benchmarks.md), depending on how glibc's thresholds
have adapted to the process's earlier allocations. Two malloc options stop that;
the price is that the process keeps its peak memory until it exits, which a training process does
anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

SETTINGS = {
    # Tensors up to 32 MiB (glibc's upper limit for this option) come from the heap, not from mmap
    # calls that are unmapped again on free.
    M_MMAP_THRESHOLD: 32 << 20,
    # Free memory at the top of the heap is never handed back to the kernel (the largest int mallopt takes).
    M_TRIM_THRESHOLD: 2**31 - 1,
}

_applied = False


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl and other libcs do not
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Applies SETTINGS to glibc malloc once per process; True when they are in effect.

    A no-op returning False where the C library is not glibc (macOS, musl).
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        log.debug("not glibc: leaving the C allocator's settings alone")
        return False
    ok = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in SETTINGS.items())
    if not ok:
        log.debug("glibc rejected a mallopt setting: freed memory may still go back to the kernel")
    _applied = ok
    return ok
