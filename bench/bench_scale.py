"""What one-shot commands cost as a deployment grows (docs/performance.md, fifth round).

Fills a demo deployment with `--objects` 1 KiB objects of one subject, written by
`--writers` short-lived processes (each leaves its own small pack on every node,
as CLI puts do), then runs commands each in a fresh process and prints its wall
time and peak resident memory (VmHWM): a `get` before any gc, the `gc` that
folds those packs, a `get` after it, a second `gc` with nothing to fold, and
`nodes`. Run it at two sizes and compare: what grows with the deployment rather
than with the answer shows in the ratio. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shardvault.config import load
from shardvault.demo import write_demo
from shardvault.model import ObjectRef
from shardvault.vault import Vault

_CHILD = """
import atexit, sys
from shardvault.cli.app import main
def peak():
    status = open("/proc/self/status").read()
    print("VmHWM", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
atexit.register(peak)
sys.argv = ["shardvault", *sys.argv[1:]]
main()
"""


def fill(config: Path, objects: int, writers: int) -> None:
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "bench", "US")
    data = os.urandom(1024)
    per_writer = -(-objects // writers)
    for start in range(0, objects, per_writer):
        with Vault.open(load(config)) as vault, ThreadPoolExecutor(16) as pool:
            keys = range(start, min(objects, start + per_writer))
            list(pool.map(lambda i: vault.put(ObjectRef("intl", "bench", f"k{i}"), data), keys))


def command(config: Path, *args: str) -> tuple[float, int]:
    """Wall seconds and peak KiB of one CLI command in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    peak = [line for line in done.stderr.splitlines() if line.startswith("VmHWM")]
    return elapsed, int(peak[-1].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=Path("."))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir))
    try:
        config = write_demo(work)
        start = time.perf_counter()
        fill(config, args.objects, args.writers)
        took = time.perf_counter() - start
        print(f"{args.objects:,} objects from {args.writers} writer processes in {took:.0f} s")
        steps = [
            ("get, before any gc", ("get", "intl", "bench", "k1", "-o", os.devnull)),
            ("gc, folding the writers' packs", ("gc",)),
            ("get, after that gc", ("get", "intl", "bench", "k2", "-o", os.devnull)),
            ("gc, nothing to fold", ("gc",)),
            ("nodes", ("nodes", "--json")),
        ]
        for label, argv in steps:
            seconds, peak = command(config, *argv)
            print(f"{label:32} {seconds:6.2f} s  peak {peak / 1024:6.0f} MiB")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
