"""`make bench`: the vault's throughput beside the pipeline limit measured in the same run.

Prints (a) the pipeline limit: encrypt + erasure-code + hash of the same data in
memory on one core; (b) put and get of a 256 MiB object through the vault on
local-directory nodes, and their ratio to (a); (c) put and get ops/s of 1 KiB
objects: one client thread, eight, and two worker processes of four and of
sixteen threads on one deployment (how a cell is served; more threads share
more of each group commit), each with the CPU time per request;
(d) peak RSS of a streamed 2 GiB put and get.
Not a test: nothing here asserts a speed. Options: --large-mib, --small-count,
--stream-gib, --dir (where the node directories go; default: a temp dir under .).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shardvault.allocator import tune_allocator
from shardvault.codec.erasure import ErasureCode
from shardvault.codec.hashing import block_hash, block_matches
from shardvault.codec.segment import SegmentBinding, SegmentCipher
from shardvault.config import load
from shardvault.demo import write_demo
from shardvault.model import ObjectRef
from shardvault.vault import Vault
from shardvault.worker_cores import pin_worker

MIB = 1 << 20
SEGMENT = MIB
RATED_LIMIT = 1230  # MiB/s: (a) write on this machine kind at its rated speed, median of
# 5-7 runs (the project's brief, PERFORMANCE.md); this VM has measured 592-1,183


def pipeline_limit(total_mib: int) -> tuple[float, float]:
    """MiB/s of seal → encode → hash (write) and verify → decode → open (read), one thread."""
    code = ErasureCode(4, 2)
    cipher = SegmentCipher(os.urandom(32), SegmentBinding(ObjectRef("t", "s", "k"), 1, bytes(16)))
    segment = os.urandom(SEGMENT)
    start = time.perf_counter()
    for index in range(total_mib):
        blocks = code.encode(cipher.seal(index, segment))
        hashes = [block_hash(block) for block in blocks]
    write = total_mib / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(total_mib):
        assert all(block_matches(b, h) for b, h in zip(blocks[:4], hashes[:4], strict=True))
        cipher.open(total_mib - 1, code.decode(blocks[:4]))
    read = total_mib / (time.perf_counter() - start)
    return write, read


class RandomSource:
    """A file-like source of `size` pseudo-random bytes that never holds them all."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.block = os.urandom(4 * MIB)

    def readinto(self, buffer: memoryview | bytearray) -> int:
        count = min(len(buffer), self.remaining, len(self.block))
        buffer[:count] = self.block[:count]
        self.remaining -= count
        return count


def disk_ceiling(root: Path, object_mib: int, n: int = 6, k: int = 4) -> float:
    """Object MiB/s the disk allows: write and fsync n/k times the object over n files."""
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MIB // k)
    per_file = object_mib  # blocks of 1/k MiB: each file gets 1/k of the object

    def one(index: int) -> None:
        fd = os.open(root / f"f{index}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(per_file):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    shutil.rmtree(root)
    return object_mib / elapsed


def open_vault(root: Path) -> Vault:
    vault = Vault.open(load(write_demo(root)))
    vault.register_subject("intl", "bench", "US")
    return vault


def large_object(vault: Vault, size_mib: int, repeats: int) -> tuple[float, float]:
    ref = ObjectRef("intl", "bench", "large")
    data = os.urandom(size_mib * MIB)
    puts, gets = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        vault.put(ref, data)
        puts.append(size_mib / (time.perf_counter() - start))
        start = time.perf_counter()
        with vault.open_read(ref) as reader:
            received = sum(len(chunk) for chunk in reader)
        gets.append(size_mib / (time.perf_counter() - start))
        assert received == len(data)
    return max(puts), max(gets)


Span = tuple[float, float, float]  # wall start, wall end, CPU seconds of the process


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _run_all(
    pool: ThreadPoolExecutor, work: Callable[[ObjectRef], object], refs: list[ObjectRef]
) -> Span:
    cpu, start = _cpu_seconds(), time.time()
    list(pool.map(work, refs))
    return start, time.time(), _cpu_seconds() - cpu


def _rates(spans: list[list[Span]], count: int) -> list[tuple[float, float]]:
    """Per phase: ops/s over the union of the spans, and CPU ms per op over all processes."""
    rates = []
    for phase in range(len(spans[0])):
        wall = max(s[phase][1] for s in spans) - min(s[phase][0] for s in spans)
        cpu = sum(s[phase][2] for s in spans)
        rates.append((count / wall, cpu / count * 1000))
    return rates


def small_objects(vault: Vault, count: int, clients: int) -> list[tuple[float, float]]:
    """(ops/s, CPU ms per op) of 1 KiB puts, then gets, from `clients` threads."""
    payload = os.urandom(1024)
    refs = [ObjectRef("intl", "bench", f"small/{clients}/{i}") for i in range(count)]
    with ThreadPoolExecutor(clients) as pool:
        put = _run_all(pool, lambda ref: vault.put(ref, payload), refs)
        get = _run_all(pool, vault.get, refs)
    return _rates([[put, get]], count)


def _small_worker(
    config: Path, keys: list[str], clients: int, pin: int | None, barrier: Any, results: Any
) -> None:
    """One worker process: its own vault on the shared deployment, puts then gets."""
    if pin is not None:
        pin_worker(pin)
    with Vault.open(load(config)) as vault:
        payload = os.urandom(1024)
        refs = [ObjectRef("intl", "bench", key) for key in keys]
        spans = []
        with ThreadPoolExecutor(clients) as pool:
            for work in (lambda ref: vault.put(ref, payload), vault.get):
                barrier.wait()
                spans.append(_run_all(pool, work, refs))
        results.put(spans)


def small_objects_processes(
    config: Path, count: int, processes: int, clients: int, *, pinned: bool = False
) -> list[tuple[float, float]]:
    """As `small_objects`, from `processes` workers sharing the deployment, as `serve` would;
    pinned: each worker on a core of its own (shardvault.worker_cores)."""
    fork = multiprocessing.get_context("fork")
    barrier, results = fork.Barrier(processes), fork.Queue()
    keys = [f"small/p{processes}x{clients}{'-pinned' if pinned else ''}/{i}" for i in range(count)]
    workers = [
        fork.Process(
            target=_small_worker,
            args=(config, keys[n::processes], clients, n if pinned else None, barrier, results),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    spans = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return _rates(spans, count)


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that over fork and exec, so a
    child would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stream_child(root: str, size: int) -> None:
    """Run in a subprocess: stream a put and a get of `size` bytes, print peak RSS."""
    vault = open_vault(Path(root))
    ref = ObjectRef("intl", "bench", "stream")
    start = time.perf_counter()
    vault.put(ref, RandomSource(size))  # type: ignore[arg-type]
    put_s = time.perf_counter() - start
    put_rss = peak_rss_kib()
    start = time.perf_counter()
    with vault.open_read(ref) as reader:
        received = sum(len(chunk) for chunk in reader)
    get_s = time.perf_counter() - start
    assert received == size
    rss = peak_rss_kib()
    print(json.dumps({"put_rss_kib": put_rss, "rss_kib": rss, "put_s": put_s, "get_s": get_s}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--stream-gib", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=Path("."))
    parser.add_argument("--stream-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        stream_child(args.stream_child, int(args.stream_gib * (1 << 30)))
        return
    tuned = tune_allocator()
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.dir))
    try:
        run(args, work, tuned)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report_small(who: str, rates: list[tuple[float, float]]) -> None:
    (puts, put_cpu), (gets, get_cpu) = rates
    print(
        f"(c) 1 KiB objects, {who}: {puts:,.0f} durable puts/s ({put_cpu:.2f} ms CPU each), "
        f"{gets:,.0f} gets/s ({get_cpu:.2f} ms CPU each)"
    )


def run(args: argparse.Namespace, work: Path, tuned: bool) -> None:
    print(
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, "
        f"allocator tuned: {tuned}, node dirs under {work}"
    )
    limit_write, limit_read = pipeline_limit(256)
    print(
        f"(a) pipeline limit, 1 core, RS 4+2, 1 MiB segments: "
        f"write {limit_write:,.0f} MiB/s, read {limit_read:,.0f} MiB/s"
    )
    print(
        f"    this VM's speed in this run: {limit_write / RATED_LIMIT:.0%} of the machine kind's "
        f"rated {RATED_LIMIT:,} MiB/s; the ops/s targets of (c) assume that speed"
    )
    disk = max(disk_ceiling(work / "disk", args.large_mib) for _ in range(2))
    print(
        f"    disk ceiling: the same object as 6 shard files, 1.5x written and fsynced: "
        f"{disk:,.0f} MiB/s of object"
    )
    vault = open_vault(work / "vault")
    put_rate, get_rate = large_object(vault, args.large_mib, repeats=3)
    print(
        f"(b) {args.large_mib} MiB object, local-directory nodes: put {put_rate:,.0f} MiB/s "
        f"({put_rate / limit_write:.0%} of limit, {put_rate / disk:.0%} of disk ceiling), "
        f"get {get_rate:,.0f} MiB/s ({get_rate / limit_read:.0%} of limit)"
    )
    for clients in (1, 8):
        report_small(f"{clients} client thread(s)", small_objects(vault, args.small_count, clients))
    vault.close()
    config = work / "vault" / "shardvault.toml"
    for threads in (4, 16):
        free = small_objects_processes(config, args.small_count, 2, threads)
        report_small(f"2 worker processes x {threads} threads on one deployment", free)
    pinned = small_objects_processes(config, args.small_count, 2, 16, pinned=True)
    report_small("2 worker processes x 16 threads, each pinned to a core", pinned)
    print(
        f"    pinned against not, 2 x 16 in this run: puts x{pinned[0][0] / free[0][0]:.2f}, "
        f"gets x{pinned[1][0] / free[1][0]:.2f}"
    )
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--stream-child",
            str(work / "stream"),
            "--stream-gib",
            str(args.stream_gib),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    gib = args.stream_gib
    print(
        f"(d) streamed {gib:g} GiB: peak RSS after put {figures['put_rss_kib'] / 1024:,.0f} MiB, "
        f"after get {figures['rss_kib'] / 1024:,.0f} MiB "
        f"(put {gib * 1024 / figures['put_s']:,.0f} MiB/s, "
        f"get {gib * 1024 / figures['get_s']:,.0f} MiB/s)"
    )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
