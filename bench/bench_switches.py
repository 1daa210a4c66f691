"""Thread switches per governed 1 KiB get and put, from many threads in one process.

With many client threads, most of a small request's kernel time here was thread
switching: a thread that releases the GIL for a syscall while others wait hands
it over, and one that finds a lock held by a thread in a syscall sleeps. This
counts the switches of every thread of the process (``/proc/self/task/*/status``),
which move little between runs where CPU time moves by ±20 %. The baseline, in
the same run, is one client thread. Flushes are real. Not a test: nothing here
asserts a number. Options: --threads, --seconds, --objects, --dir.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shardvault.config import load
from shardvault.demo import write_demo
from shardvault.model import ObjectRef
from shardvault.vault import Vault


def switches() -> int:
    """Voluntary and involuntary switches of every live thread of this process."""
    total = 0
    for status in Path("/proc/self/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except FileNotFoundError:  # a thread that just ended
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return total


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    call: Callable[[ObjectRef], object], refs: list[ObjectRef], threads: int, seconds: float
) -> tuple[float, float, float]:
    """(ops/s, switches per op, CPU µs per op) of `threads` clients looping over refs."""
    start, done, release = (threading.Barrier(threads + 1) for _ in range(3))
    stop = threading.Event()
    counts = [0] * threads

    def client(n: int) -> None:
        mine = refs[n::threads]
        start.wait()
        while not stop.is_set():
            call(mine[counts[n] % len(mine)])
            counts[n] += 1
        done.wait()
        release.wait()  # alive until counted: an ended thread's switches are gone

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    before, cpu, began = switches(), cpu_seconds(), time.perf_counter()
    start.wait()
    time.sleep(seconds)
    stop.set()
    done.wait()
    wall, ops = time.perf_counter() - began, sum(counts)
    after, cpu = switches(), cpu_seconds() - cpu
    release.wait()
    for worker in workers:
        worker.join()
    return ops / wall, (after - before) / ops, cpu / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path("."))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-switches-", dir=args.dir))
    try:
        with Vault.open(load(write_demo(work / "vault"))) as vault:
            vault.register_subject("intl", "bench", "US")
            payload = os.urandom(1024)
            refs = [ObjectRef("intl", "bench", f"k/{i}") for i in range(args.objects)]
            for ref in refs:
                vault.put(ref, payload)
            for name, call in (("get", vault.get), ("put", lambda r: vault.put(r, payload))):
                for threads in (1, args.threads):
                    rate, per_op, cpu = measure(call, refs, threads, args.seconds)
                    print(
                        f"1 KiB {name}, {threads:2d} thread(s): {rate:7,.0f}/s, "
                        f"{per_op:5.1f} switches and {cpu:5.0f} µs CPU per {name}"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
