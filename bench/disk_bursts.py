"""How fast fsynced writes go, chunk by chunk, after how much rest, as the page cache grows.

Each round writes CHUNKS chunks of 256 MiB (1 MiB writes, an fsync a chunk) to
one file and prints MiB/s per chunk, then rests before the next round. Nothing
here goes through shardvault. On this VM the first GiB or so runs fast and the
rest about a quarter as fast; with ``--drop`` each chunk's pages leave the page
cache once fsynced, and every chunk runs fast. So the slow chunks are not the
disk's: they are the page cache growing into memory the VM has handed back to
its host, which must back each page again (docs/performance.md, twenty-ninth
round; the twenty-fourth took them for the disk's bursts).

    .venv/bin/python bench/disk_bursts.py --chunks 12 --rests 20 0
    .venv/bin/python bench/disk_bursts.py --chunks 12 --rests 20 0 --drop
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
CHUNK_MIB = 256


def chunk_rates(path: Path, chunks: int, drop: bool = False) -> list[float]:
    """MiB/s of each 256 MiB chunk appended to ``path`` and fsynced (then dropped from
    the page cache if asked, so that the cache does not grow)."""
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    rates = []
    try:
        for _ in range(chunks):
            start = time.perf_counter()
            for _ in range(CHUNK_MIB):
                os.write(fd, block)
            os.fsync(fd)
            if drop:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
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
    parser.add_argument(
        "--drop", action="store_true", help="drop each chunk from the page cache once fsynced"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="disk-bursts-", dir=args.dir) as scratch:
        for rest in args.rests:
            time.sleep(rest)
            rates = chunk_rates(Path(scratch) / "chunks", args.chunks, args.drop)
            shown = " ".join(f"{rate:,.0f}" for rate in rates)
            print(f"after {rest:g} s idle: MiB/s a chunk: {shown}", flush=True)


if __name__ == "__main__":
    main()
