"""One core per worker process: a process serving small requests keeps its threads together.

A small request hands the GIL, and its waits, between the process's threads dozens of
times. With the threads free to run on any core, each hand-off may wake a thread on
another CPU: an inter-processor interrupt, which on a virtual machine is an exit to
the hypervisor. The threads of one process run Python one at a time anyway, so keeping
them on one core costs a small request little, and saves it those interrupts: two
worker processes of 16 threads, each pinned to its own core, serve far more small puts
and gets on this machine than unpinned (docs/performance.md, twenty-third round).
The cost is the other core: a pinned worker's large object is encrypted, coded and
hashed on its one core, and a pinned worker cannot move away from other work on it.
So it is for worker processes, one per core, that serve many small requests; called
explicitly, never by `Vault.open`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from shardvault.errors import InvalidInput


def pin_worker(index: int) -> int | None:
    """Pin this process (every thread it has, and so every thread it will start) to
    the index-th CPU it may run on, counting round; returns that CPU, or None where
    the platform cannot pin threads (the process then runs as it did)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidInput(f"worker index {index!r}: give a whole number, 0 or more")
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[index % len(allowed)]
    # a thread takes its starter's CPUs: one started by a thread not yet pinned, after
    # the list was read, is found by the next list; none is once all are pinned
    pinned: set[int] = set()
    while unpinned := set(_threads()) - pinned:
        for thread in unpinned:
            try:
                os.sched_setaffinity(thread, {cpu})
            except ProcessLookupError:
                continue  # it ended meanwhile
        pinned |= unpinned
    return cpu


def _threads() -> list[int]:
    """The native ids of this process's threads: /proc's list also has threads a C
    library started; without /proc, those Python knows of."""
    try:
        return [int(name) for name in os.listdir(Path("/proc/self/task"))]
    except OSError:
        return [t.native_id for t in threading.enumerate() if t.native_id is not None]
