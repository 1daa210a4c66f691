"""How fast the disk takes fsynced writes, chunk by chunk, and after how much rest.

A large put's speed here depends on where it falls in the disk's bursts: the
disk under this VM takes a GiB or so of fsynced writes fast and then much less
for as long as the writes go on (docs/performance.md, twenty-fourth round).
Each round writes CHUNKS chunks of 256 MiB (1 MiB writes, an fsync a chunk) to
one file and prints MiB/s per chunk, then rests before the next round. The
figures are the disk's, not the vault's: nothing here goes through shardvault.

    .venv/bin/python bench/disk_bursts.py --chunks 8 --rests 0 1 5 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
CHUNK_MIB = 256


def chunk_rates(path: Path, chunks: int) -> list[float]:
    """MiB/s of each 256 MiB chunk appended to ``path`` and fsynced."""
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    rates = []
    try:
        for _ in range(chunks):
            start = time.perf_counter()
            for _ in range(CHUNK_MIB):
                os.write(fd, block)
            os.fsync(fd)
            rates.append(CHUNK_MIB / (time.perf_counter() - start))
    finally:
        os.close(fd)
        path.unlink()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8, help="chunks of 256 MiB a round")
    parser.add_argument(
        "--rests", type=float, nargs="+", default=[0, 1, 5, 30], help="seconds idle before each"
    )
    parser.add_argument("--dir", type=Path, default=Path("."), help="where the file goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="disk-bursts-", dir=args.dir) as scratch:
        for rest in args.rests:
            time.sleep(rest)
            rates = chunk_rates(Path(scratch) / "chunks", args.chunks)
            shown = " ".join(f"{rate:,.0f}" for rate in rates)
            print(f"after {rest:g} s idle: MiB/s a chunk: {shown}", flush=True)


if __name__ == "__main__":
    main()
