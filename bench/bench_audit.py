"""Benchmark: authorization + audit overhead per request, group commit, verify speed.

Run: .venv/bin/python bench/bench_audit.py [--entries 1000000] [--dir /tmp]

Every figure is printed next to a baseline measured in the same run on the same
machine and disk, so the numbers mean something on any hardware:

- policy decide            vs SHA-256 of one entry's bytes
- build + append one entry vs a plain write + fsync of the same bytes (1 thread)
- group-commit append rate with 1 and 8 threads vs plain write + fsync per entry
- verify of an N-entry export (N = 1,000,000 by default) vs SHA-256 of the same lines
- root, inclusion and consistency proof of the N-entry log from stored tree nodes
  vs the same from every leaf hash (as before stored nodes)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.audit import (
    AuditHasher,
    AuditLog,
    Cosigner,
    NoteSigner,
    export_to_directory,
    merkle,
    new_entry,
    sign_checkpoint,
    verify_export,
)
from shardvault.demo import DEMO_POLICY
from shardvault.model import DataClass
from shardvault.policy import Action, Principal, PrincipalKind, Resource, decide, parse_policy

ORIGIN = "audit.us.example/bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HASHER = AuditHasher(b"\x42" * 32)


def entry(i: int):
    return new_entry(
        at=T0 + timedelta(microseconds=i),
        hasher=HASHER,
        request_id=f"req-{i:012d}",
        principal="svc-api",
        tenant="chat",
        action="read",
        purpose="serve-user",
        decision="allow",
        rule="service-serves-users",
        result="ok",
        subject=f"user-{i % 100_000}",
        key=f"inbox/{i}",
    )


def per_op(fn: Callable[[], object], n: int) -> float:
    """Seconds per call of ``fn``, best of three runs of ``n`` calls."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def row(label: str, value: str, baseline_label: str, baseline: str) -> None:
    print(f"  {label:<44} {value:>14}   | {baseline_label:<34} {baseline:>12}")


def bench_policy_and_entry() -> None:
    policy = parse_policy(DEMO_POLICY)
    principal = Principal("svc-api", "chat", PrincipalKind.SERVICE, "US")
    resource = Resource("chat", "US", DataClass.PROTECTED, "u1", "inbox/1")
    data = entry(0).to_bytes()
    decide_s = per_op(
        lambda: decide(policy, principal, Action.READ, resource, "serve-user"), 50_000
    )
    sha_s = per_op(lambda: hashlib.sha256(data).digest(), 50_000)
    build_s = per_op(lambda: entry(7).to_bytes(), 20_000)
    print("CPU cost per request (µs)")
    row(
        "policy decide", f"{decide_s * 1e6:.2f} µs", "SHA-256 of one entry", f"{sha_s * 1e6:.2f} µs"
    )
    row("build audit entry (2 HMACs + JSON)", f"{build_s * 1e6:.2f} µs", "", "")


def bench_append_latency(base: Path, n: int) -> None:
    policy = parse_policy(DEMO_POLICY)
    principal = Principal("svc-api", "chat", PrincipalKind.SERVICE, "US")
    resource = Resource("chat", "US", DataClass.PROTECTED, "u1", "inbox/1")
    data = entry(0).to_bytes()
    with AuditLog.open(base / "latency") as log:
        counter = iter(range(10**9))

        def request() -> None:
            decision = decide(policy, principal, Action.READ, resource, "serve-user")
            assert decision.allowed
            log.append(entry(next(counter)))

        audit_s = per_op(request, n)
    fd = os.open(base / "plain-latency", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def plain() -> None:
        os.write(fd, data)
        os.fsync(fd)

    plain_s = per_op(plain, n)
    os.close(fd)
    print("Per-request latency, 1 thread, durable (µs)")
    row(
        "decide + build + append (fsync)",
        f"{audit_s * 1e6:,.0f} µs",
        "plain write + fsync",
        f"{plain_s * 1e6:,.0f} µs",
    )


def run_threads(threads: int, seconds: float, work: Callable[[int, int], None]) -> float:
    """Call ``work(thread, i)`` in a loop on ``threads`` threads for ``seconds``; calls/s."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        while time.perf_counter() < stop:
            work(t, done[t])
            done[t] += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(done) / (time.perf_counter() - start)


def bench_group_commit(base: Path, seconds: float) -> None:
    print("Append rate with group commit (entries/s, durable)")
    data = entry(0).to_bytes()
    for threads in (1, 8):
        with AuditLog.open(base / f"rate-{threads}") as log:
            rate = run_threads(
                threads, seconds, lambda t, i, log=log: log.append(entry(t * 10**9 + i))
            )
            per_batch = log.size / log.commit_count
        fd = os.open(base / f"plain-{threads}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        lock = threading.Lock()

        def plain(t: int, i: int, fd: int = fd, lock: threading.Lock = lock) -> None:
            with lock:
                os.write(fd, data)
                os.fsync(fd)

        plain_rate = run_threads(threads, seconds, plain)
        os.close(fd)
        row(
            f"{threads} thread(s): audit append ({per_batch:.1f}/fsync)",
            f"{rate:,.0f} /s",
            "plain write + fsync each",
            f"{plain_rate:,.0f} /s",
        )


def bench_verify(base: Path, count: int) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    witness = Cosigner("partner.example/witness", Ed25519PrivateKey.generate())
    print(f"Verify a {count:,}-entry export")
    start = time.perf_counter()
    with AuditLog.open(base / "big") as log:
        batch = 10_000
        for first in range(0, count, batch):
            log.append_many([entry(i) for i in range(first, min(count, first + batch))])
        fill_s = time.perf_counter() - start
        note = sign_checkpoint(log.checkpoint(ORIGIN), signer)
        note = note.with_signature(witness.sign_at(note.text, int(time.time())))
        log.store_head(note)
        start = time.perf_counter()
        export_to_directory(log, base / "export")
        export_s = time.perf_counter() - start
    for path in (base / "big").glob("tree-*.log"):
        path.unlink()  # as after an upgrade: the first root or proof fills them
    with AuditLog.open(base / "big") as log:
        bench_proofs(log)
    start = time.perf_counter()
    report = verify_export(
        base / "export", signer.verifier_key(), cosigner_key=witness.verifier_key()
    )
    verify_s = time.perf_counter() - start
    assert report.entries == count
    start = time.perf_counter()
    with open(base / "export" / "entries.jsonl", "rb") as f:
        for line in f:
            hashlib.sha256(line[:-1]).digest()
    sha_s = time.perf_counter() - start
    size = (base / "export" / "entries.jsonl").stat().st_size
    row("generate (build + batched append)", f"{count / fill_s:,.0f} /s", "", "")
    row("export to directory", f"{count / export_s:,.0f} /s", "", "")
    row(
        f"verify ({size / 1e6:,.0f} MB, {verify_s:.1f} s)",
        f"{count / verify_s:,.0f} /s",
        f"read + SHA-256 per line ({sha_s:.1f} s)",
        f"{count / sha_s:,.0f} /s",
    )


def bench_proofs(log: AuditLog) -> None:
    """A root and two proofs at the log's size: from stored nodes, and from every leaf."""
    n = log.size
    index, old = n // 3, n // 2 + 1

    def stored() -> None:
        log.root_at(n)
        log.inclusion_proof(index, n)
        log.consistency_proof(old, n)

    def every_leaf() -> None:
        leaves = log.leaf_hashes(0, n)
        merkle.root_of(leaves)
        merkle.inclusion_proof(leaves, index)
        merkle.consistency_proof(leaves, old)

    start = time.perf_counter()
    stored()
    first = time.perf_counter() - start
    later = per_op(stored, 20)
    baseline = per_op(every_leaf, 1)
    row("root + 2 proofs, stored nodes: first", f"{first * 1e3:,.1f} ms", "", "")
    row(
        "root + 2 proofs, stored nodes: later",
        f"{later * 1e3:,.2f} ms",
        "from every leaf hash",
        f"{baseline * 1e3:,.0f} ms ({baseline / later:,.0f}x)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="where to put the temporary logs")
    parser.add_argument("--seconds", type=float, default=3.0, help="per append-rate run")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
    try:
        started = time.perf_counter()
        bench_policy_and_entry()
        bench_append_latency(base, 200)
        bench_group_commit(base, args.seconds)
        bench_verify(base, args.entries)
        print(f"total {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
