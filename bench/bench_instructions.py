"""Instructions per governed 1 KiB get and put (callgrind): CPU work, measured repeatably.

This VM's CPU time per request moves by ±20 % between identical runs; the
instruction count of the same work does not. Each request loop runs under
valgrind twice (N and 3N requests) and the difference is divided by 2N, so
start-up and set-up cancel out. Flushes (fsync, fdatasync, syncfs) are stubbed:
what is counted is the user-space work of a request, not the disk. The baseline,
in the same run, is the codec work alone for one 1 KiB object (seal, erasure-code
and hash for a put; verify, decode and open for a get). A "get" re-reads one of
50 objects (its manifest is parsed once per process); a "fresh get" reads each
object for the first time, as `bench_vault.py` (c) does. Needs valgrind.
Options: --requests N (default 100); --steady: the loop's timed work (the seen
positions' 2-second write-out, the packs' 10-second prune) left until close, the
hash seed fixed and the cyclic GC off, so that two runs of one tree agree to about
1 k instead of about 18 k: for the difference one change makes, not for figures
to compare with the rounds before.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("get", "fresh get", "put")


def _steady() -> None:
    """What --steady takes out of the loop (see the docstring): timers and the GC."""
    import gc

    import shardvault.governance.seen as seen
    import shardvault.nodes.packs as packs

    gc.disable()
    assert seen.SeenRecorder.__init__.__kwdefaults__ is not None
    seen.SeenRecorder.__init__.__kwdefaults__["interval"] = 1e9
    packs.PRUNE_SECONDS = 1e9


def _stub_flushes() -> None:
    import shardvault.group_commit as group_commit

    os.fsync = os.fdatasync = lambda fd: None
    group_commit.sync_filesystem = lambda fd: None  # type: ignore[assignment]


def _vault_loop(mode: str, count: int, written: int) -> None:
    from shardvault.config import load
    from shardvault.demo import write_demo
    from shardvault.model import ObjectRef
    from shardvault.vault import Vault

    root = Path(tempfile.mkdtemp(prefix="bench-instructions-", dir="."))
    try:
        vault = Vault.open(load(write_demo(root)))
        vault.register_subject("intl", "bench", "US")
        payload = os.urandom(1024)
        warm = [ObjectRef("intl", "bench", f"warm-{i}") for i in range(50)]
        for ref in warm:
            vault.put(ref, payload)
            vault.get(ref)
        fresh = [ObjectRef("intl", "bench", f"fresh-{i}") for i in range(written)]
        for ref in fresh:  # as many in both runs: only the gets differ
            vault.put(ref, payload)
        for i in range(count):
            if mode == "get":
                vault.get(warm[i % len(warm)])
            elif mode == "fresh get":
                vault.get(fresh[i])
            else:
                vault.put(ObjectRef("intl", "bench", f"new-{i}"), payload)
        vault.close()
    finally:
        shutil.rmtree(root)


def _codec_loop(mode: str, count: int, written: int) -> None:
    from shardvault.codec.erasure import ErasureCode
    from shardvault.codec.hashing import block_hash, block_matches
    from shardvault.codec.segment import SegmentBinding, SegmentCipher
    from shardvault.model import ObjectRef

    code = ErasureCode(4, 2)
    cipher = SegmentCipher(os.urandom(32), SegmentBinding(ObjectRef("t", "s", "k"), 1, bytes(16)))
    payload = os.urandom(1024)
    blocks = code.encode(cipher.seal(0, payload))
    hashes = [block_hash(block) for block in blocks]
    for _ in range(count):
        if mode == "put":
            blocks = code.encode(cipher.seal(0, payload))
            hashes = [block_hash(block) for block in blocks]
        else:
            assert all(block_matches(b, h) for b, h in zip(blocks[:4], hashes[:4], strict=True))
            cipher.open(0, code.decode(blocks[:4]))


def _instructions(kind: str, mode: str, count: int, written: int, steady: bool) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", kind, mode, str(count), str(written),
        *(["--steady"] if steady else []),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0") if steady else None
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(kind: str, mode: str, count: int, steady: bool = False) -> float:
    written = 3 * count if mode == "fresh get" else 0
    more, fewer = (_instructions(kind, mode, n, written, steady) for n in (3 * count, count))
    return (more - fewer) / (2 * count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--steady", action="store_true", help="timers and GC out of the loop")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, mode, count, written = args.child
        if args.steady:
            _steady()
        _stub_flushes()
        (_vault_loop if kind == "vault" else _codec_loop)(mode, int(count), int(written))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    for mode in MODES:
        vault = per_request("vault", mode, args.requests, args.steady)
        codec = per_request("codec", mode, args.requests, args.steady)
        print(
            f"1 KiB {mode}: {vault / 1e6:.3f} M instructions through the vault | "
            f"codec alone {codec / 1e3:.1f} k ({vault / codec:.0f}x)"
        )


if __name__ == "__main__":
    main()
