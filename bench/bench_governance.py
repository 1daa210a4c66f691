"""Cost of governance per request: decide + durable audit append, and a small read end to end.

Runs on a fresh demo deployment in a temporary directory on the current disk.
Prints per-request latency sequentially and throughput with concurrent callers
(whose audit appends share one fsync by group commit).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shardvault.config import load
from shardvault.demo import write_demo
from shardvault.model import ObjectRef, RequestContext, new_request_id
from shardvault.policy import Action, Principal, PrincipalKind, Resource, decide
from shardvault.vault import Vault

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500


def ms(samples: list[float]) -> str:
    p99 = sorted(samples)[int(len(samples) * 0.99)]
    return f"median {statistics.median(samples) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"


def main() -> None:
    with (
        tempfile.TemporaryDirectory(dir=".") as tmp,
        Vault.open(load(write_demo(Path(tmp)))) as vault,
    ):
        svc = Principal("svc-api", "intl", PrincipalKind.SERVICE, "US")
        vault.governance.registry.add(svc, token_ttl=None)
        vault.register_subject("intl", "alice", "US")
        ref = ObjectRef("intl", "alice", "small")
        vault.put(ref, b"x" * 1024)
        gov = vault.governance

        def ctx() -> RequestContext:
            return RequestContext("svc-api", "serve-user", new_request_id())

        def authorize() -> None:
            gov.guard.authorize(ctx(), Action.READ, "intl", "US", "alice", "small")

        def timed(call: object, n: int) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                call()  # type: ignore[operator]
                out.append(time.perf_counter() - start)
            return out

        resource = Resource("intl", "US")
        decide_only = timed(lambda: decide(gov.policy, svc, Action.READ, resource, "serve-user"), N)
        auth = timed(authorize, N)
        reads = timed(lambda: vault.get(ref, ctx=ctx()), N)
        with ThreadPoolExecutor(16) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: authorize(), range(N * 4)))
            concurrent = N * 4 / (time.perf_counter() - start)
        print(f"policy decide only:            {ms(decide_only)}")
        print(f"authorize (decide + audit):    {ms(auth)}")
        print(f"get 1 KiB (with governance):   {ms(reads)}")
        print(f"authorize, 16 threads:         {concurrent:,.0f} requests/s")


if __name__ == "__main__":
    main()
