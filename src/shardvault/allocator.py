"""Keep glibc from returning MiB-sized buffers to the kernel after every use.

With glibc's default thresholds each 1 MiB segment buffer is a fresh mmap that
page-faults on first touch: erasure coding drops from ~5,700 to ~350 MiB/s on
this machine (docs/performance.md). Raising the mmap and trim thresholds keeps
those buffers in the heap and reused. Called explicitly by entry points, never
at import time; a no-op where glibc's mallopt is unavailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 64 << 20
_TRIM_THRESHOLD = 256 << 20
_tuned = False


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; returns whether it applied."""
    global _tuned
    if _tuned:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    _tuned = ok
    return ok
