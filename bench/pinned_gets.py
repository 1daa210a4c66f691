"""Steady small gets from two pinned worker processes: CPU a get, for A/B of two trees.

Each worker (16 threads, pinned to a core of its own) puts 2,000 1 KiB objects, then
reads them over and over for SECONDS; the run prints puts/s, gets/s and the CPU
(user + sys, and sys alone) a get took over both workers. --clients and --workers
change the 2 x 16: fewer client threads share fewer of each audit write's fsync.
Longer than `make bench`'s one pass of gets, so a difference of a few percent in
CPU shows. --audit-times also prints, a worker, how long its audit writes waited for
the log's lock (the other worker holding it), held it, and spent in the write and
its flush, a batch: that lock is the one section the workers take turns in. To
compare two trees, run it alternately against each, the older one's source first
on the path:

    PYTHONPATH=../old/src .venv/bin/python bench/pinned_gets.py --seconds 6
    .venv/bin/python bench/pinned_gets.py --seconds 6
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_vault import open_vault
from shardvault.allocator import tune_allocator
from shardvault.audit import log as audit_log
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault
from shardvault.worker_cores import pin_worker

OBJECTS = 2000


def _cpu() -> tuple[float, float]:
    """The process's CPU seconds so far: user + sys, and sys."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _cpu()
    return now[0] - start[0], now[1] - start[1]


class AuditTimes:
    """Wall time of the audit log's cross-process section, by wrapping its private
    methods in this process: for measurement only, and it breaks loudly if they change."""

    PARTS = (  # what is timed: the lock taken, all under it, the write and its flush
        ("waiting for the lock", audit_log._Exclusive, "__enter__"),
        ("lock wait and section", audit_log.AuditLog, "_write_batches"),
        ("entries written and flushed", audit_log.AuditLog, "_write"),
    )

    def __init__(self) -> None:
        self.seconds = dict.fromkeys((name for name, _, _ in self.PARTS), 0.0)
        self.batches = 0
        for name, owner, method in self.PARTS:
            setattr(owner, method, self._timed(name, getattr(owner, method)))

    def _timed(self, name: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.batches += name == "lock wait and section"

        return timed

    def report(self, index: int) -> str:
        batches = max(self.batches, 1)
        waited, whole, flush = (s / batches * 1e6 for s in self.seconds.values())
        return (
            f"worker {index}: {self.batches:,} audit batches; a batch waited {waited:,.0f} us "
            f"for the lock, then held it {whole - waited:,.0f} us, of which the entries' "
            f"write and flush took {flush:,.0f} us (with the GIL taken back after each)"
        )

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.batches = 0


def _worker(
    config: Path,
    index: int,
    clients: int,
    seconds: float,
    barrier: Any,
    results: Any,
    audit_times: bool = False,
) -> None:
    pin_worker(index)
    times = AuditTimes() if audit_times else None
    with Vault.open(load(config)) as vault, ThreadPoolExecutor(clients) as pool:
        payload = os.urandom(1024)
        refs = [ObjectRef("intl", "bench", f"pinned/{index}/{i}") for i in range(OBJECTS)]
        barrier.wait()
        put_start, put_cpu = time.time(), _cpu()
        list(pool.map(lambda ref: vault.put(ref, payload), refs))
        put_span = (put_start, time.time(), _since(put_cpu)[0])
        list(pool.map(vault.get, refs))  # each manifest parsed once before the timing
        barrier.wait()
        if times is not None:
            times.reset()
        start, cpu, gets = time.time(), _cpu(), 0
        while time.time() - start < seconds:
            list(pool.map(vault.get, refs))
            gets += len(refs)
        results.put((put_span, gets, time.time() - start, _since(cpu)))
        if times is not None:
            print(times.report(index), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=16, help="client threads a worker")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--dir", type=Path, default=None, help="where the node directories go")
    parser.add_argument(
        "--audit-times", action="store_true", help="time the audit writes' shared section"
    )
    args = parser.parse_args()
    tune_allocator()
    root = Path(tempfile.mkdtemp(prefix="pinned-", dir=args.dir))
    workers_n = args.workers
    try:
        open_vault(root / "v").close()
        config = root / "v" / "shardvault.toml"
        fork = multiprocessing.get_context("fork")
        barrier, results = fork.Barrier(workers_n + 1), fork.Queue()
        workers = [
            fork.Process(
                target=_worker,
                args=(config, n, args.clients, args.seconds, barrier, results, args.audit_times),
            )
            for n in range(workers_n)
        ]
        for worker in workers:
            worker.start()
        barrier.wait()
        barrier.wait()
        spans = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
    finally:
        shutil.rmtree(root)
    put_wall = max(s[0][1] for s in spans) - min(s[0][0] for s in spans)
    put_cpu = sum(s[0][2] for s in spans) / (workers_n * OBJECTS)
    gets = sum(s[1] for s in spans)
    get_wall = max(s[2] for s in spans)
    get_cpu = sum(s[3][0] for s in spans) / gets
    get_sys = sum(s[3][1] for s in spans) / gets
    print(
        f"{workers_n} x {args.clients}: "
        f"{workers_n * OBJECTS / put_wall:,.0f} puts/s ({put_cpu * 1e3:.2f} ms CPU each), "
        f"{gets / get_wall:,.0f} gets/s ({get_cpu * 1e6:.0f} us CPU each, "
        f"{get_sys * 1e6:.0f} us of it sys)"
    )


if __name__ == "__main__":
    main()
