"""Benchmark: the keyring custodian at N tombstones beside the same at none.

Run: .venv/bin/python bench/bench_keyring.py [--tombstones 100000] [--dir /tmp]

A tombstone is a forgotten user. Each keyring is filled the way an older
shardvault left one: a version-1 file holding a root and N destroyed key ids,
then opened once (this version moves them into its SQLite file then; the figure
is printed). Then, at N and at 0 tombstones, in the same run:

- open: a new `KeyringCustodian` and its first unwrap (what every process pays),
  in this process and in a new one (with that process's peak memory, VmHWM);
- destroy: one forget's tombstone, durable (median of --destroys);
- unwrap: one object read's key, the hot path (median of --unwraps, in µs).

Each figure is printed with its ratio to the same at 0 tombstones. Setting
PYTHONPATH to another tree's src runs the same measurement on that tree.
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import shardvault
from shardvault.keys import hierarchy
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.port import KeyScope
from shardvault.keys.rootkey import seal_key
from shardvault.model import Justification

US = KeyScope("intl", "US")
WHY = Justification("svc-bench", "serve-user", "req-bench", "US")
KEY = bytes(32)


def write_version_1(path: Path, tombstones: int) -> bytes:
    """A version-1 keyring with one root and `tombstones` destroyed key ids; returns the root."""
    root = os.urandom(32)
    doc = {
        "format": "shardvault-keyring",
        "version": 1,
        "roots": {US.label(): base64.b64encode(root).decode()},
        "destroyed": {US.label(): [hierarchy.new_key_id() for _ in range(tombstones)]},
    }
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc, indent=1))
    os.chmod(path, 0o600)
    return root


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(path: str, blob: str) -> None:
    """In a new process: open the keyring, unwrap once; print the seconds and VmHWM (KiB)."""
    start = time.perf_counter()
    KeyringCustodian(Path(path)).unwrap(US, "kid-live", bytes.fromhex(blob), WHY)
    elapsed = time.perf_counter() - start
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print(elapsed, peak)


def fresh_process(path: Path, blob: bytes) -> tuple[float, float]:
    """Seconds a new process takes to open the keyring and unwrap once, and its peak MiB."""
    command = [sys.executable, __file__, "--child", str(path), blob.hex()]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    seconds, kib = out.split()
    return float(seconds), int(kib) / 1024


def measure(directory: Path, tombstones: int, args: argparse.Namespace) -> dict[str, float]:
    """Seconds for the first open, an open, a destroy and an unwrap at `tombstones`."""
    path = directory / "keyring.json"
    root = write_version_1(path, tombstones)
    blob = seal_key(root, US, "kid-live", KEY)
    start = time.perf_counter()
    KeyringCustodian(path)
    first = time.perf_counter() - start

    def open_and_unwrap() -> None:
        KeyringCustodian(path).unwrap(US, "kid-live", blob, WHY)

    custodian = KeyringCustodian(path)
    destroyed = iter(range(args.destroys))
    process_seconds, process_mib = fresh_process(path, blob)
    figures = {
        "first open": first,
        "open": median_seconds(open_and_unwrap, args.opens),
        "open, new process": process_seconds,
        "peak, new process": process_mib,
        "destroy": median_seconds(
            lambda: custodian.destroy(US, f"kid-{next(destroyed)}", WHY), args.destroys
        ),
        "unwrap": median_seconds(lambda: custodian.unwrap(US, "kid-live", blob, WHY), args.unwraps),
    }
    sizes = sum(p.stat().st_size for p in directory.iterdir())
    print(f"  {tombstones:>9,} tombstones: keyring files {sizes / 1024:,.0f} KiB", flush=True)
    return figures


def report(at_n: dict[str, float], at_0: dict[str, float], tombstones: int) -> None:
    print(f"{'':26}{'0 tombstones':>14}{f'{tombstones:,} tombstones':>22}{'ratio':>9}")
    for name, unit, scale in (
        ("first open", "ms", 1e3),
        ("open", "ms", 1e3),
        ("open, new process", "ms", 1e3),
        ("peak, new process", "MiB", 1),
        ("destroy", "ms", 1e3),
        ("unwrap", "µs", 1e6),
    ):
        base, value = at_0[name] * scale, at_n[name] * scale
        print(f"{name + ' (' + unit + ')':26}{base:>14,.2f}{value:>22,.2f}{value / base:>8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tombstones", type=int, default=100_000)
    parser.add_argument("--destroys", type=int, default=20)
    parser.add_argument("--opens", type=int, default=20)
    parser.add_argument("--unwraps", type=int, default=5_000)
    parser.add_argument("--dir", default=None, help="where to put the temporary keyrings")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    base = Path(tempfile.mkdtemp(prefix="bench-keyring-", dir=args.dir))
    try:
        print(f"keyring code: {Path(shardvault.__file__).parent}")
        at_0 = measure(base / "none", 0, args)
        at_n = measure(base / "many", args.tombstones, args)
        report(at_n, at_0, args.tombstones)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
