"""A multi-GiB object streams through put and get with bounded memory (child process RSS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardvault.demo import write_demo

CHILD = r"""
import io, json, os, sys, time
from pathlib import Path
from blake3 import blake3
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault

TOTAL = int(sys.argv[2])

class Generated(io.RawIOBase):
    '''TOTAL bytes of a repeating random pattern, never held in memory at once.'''

    def __init__(self) -> None:
        self.pattern = os.urandom((1 << 20) + 7)
        self.left = TOTAL
        self.offset = 0
        self.digest = blake3()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, len(self.pattern) - self.offset)
        chunk = memoryview(self.pattern)[self.offset : self.offset + n]
        buffer[:n] = chunk
        self.digest.update(chunk)
        self.offset = (self.offset + n) % len(self.pattern)
        self.left -= n
        return n

vault = Vault.open(load(Path(sys.argv[1])))
vault.register_subject("intl", "big", "US")
ref = ObjectRef("intl", "big", "video.raw")
source = Generated()
started = time.perf_counter()
info = vault.put(ref, source)
put_s = time.perf_counter() - started
started = time.perf_counter()
digest, size, largest = blake3(), 0, 0
with vault.open_read(ref) as reader:
    for chunk in reader:
        digest.update(chunk)
        size += len(chunk)
        largest = max(largest, len(chunk))
    damage = len(reader.damage)
get_s = time.perf_counter() - started
print(json.dumps({
    "size": size, "stored": info.size, "segments": info.segments, "largest_chunk": largest,
    "same": digest.digest() == source.digest.digest(), "damage": damage,
    "put_s": put_s, "get_s": get_s,
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec from the parent
    "maxrss_kib": int(next(
        line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")
    )),
}))
"""

GIB = 1 << 30
SIZE = 2 * GIB + 12_345  # two GiB and a short last segment


@pytest.mark.slow
def test_two_gib_stream_with_bounded_memory(tmp_path: Path) -> None:
    config = write_demo(tmp_path / "deploy")  # the demo's own 1 MiB segments
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), str(SIZE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["size"] == result["stored"] == SIZE
    assert result["segments"] == 2049
    assert result["largest_chunk"] == 1 << 20
    assert result["same"] is True
    assert result["damage"] == 0
    assert result["maxrss_kib"] < 300 * 1024, result
