"""Stored interior nodes of a log's Merkle tree, so roots and proofs read O(log n) hashes.

Every perfect, aligned subtree of 256^L leaves (L = 1, 2, 3, ...) is a node of
the RFC 9162 tree of every size that covers it, so its hash never changes once
its last leaf is in. ``tree-<L>.log`` keeps those hashes, record i covering
leaves ``i * 256^L .. (i + 1) * 256^L``::

    b"SVAUDT" u16 version=1, then per record: u8 1, the 32-byte node hash, the
    32-byte leaf hash of its last entry, u32 CRC-32 of (u8 L, u64 i, both hashes)

A root or proof then combines at most 255 stored nodes per level and at most
255 leaf hashes at each end, instead of every leaf hash of the log (at a
million entries that was 2.8 s and 178 MiB per head).

The files are a cache of the index, filled when first asked for and trusted as
far as the index is: a record whose marker or CRC does not hold (never written,
torn, damaged, moved), or that names another last leaf than the index has
there (left by another history of the log: a restore, a crash), is computed
again from the level below and written back; an unknown header or an
unwritable directory means computing without storing. The log also drops the
files whenever it rebuilds its state from the whole index.
A record that is wrong but whose CRC holds can only have been written on
purpose: the proofs built from it then fail their checks (a refusal, never a
wrong receipt), and removing the files repairs it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from shardvault.audit import merkle

TREE_VERSION = 1
HEIGHT = 8
WIDTH = 1 << HEIGHT
"""Children per stored node: a level-L node covers WIDTH**L leaves."""

_MAGIC = b"SVAUDT"
_HEADER = struct.pack(">6sH", _MAGIC, TREE_VERSION)
_RECORD = struct.Struct(">B32s32sI")
_WHERE = struct.Struct(">BQ")
_PRESENT = 1

Leaves = Callable[[int, int], list[bytes]]
"""Leaf hashes of entries ``lo..hi``, from the index."""


def _record(level: int, index: int, node: bytes, last: bytes) -> bytes:
    crc = zlib.crc32(_WHERE.pack(level, index) + node + last)
    return _RECORD.pack(_PRESENT, node, last, crc)


def _stored(record: bytes, level: int, index: int) -> tuple[bytes, bytes] | None:
    """(node hash, last leaf hash) of ``record`` if it is whole and for (level, index)."""
    if len(record) != _RECORD.size:
        return None
    marker, node, last, crc = _RECORD.unpack(record)
    if marker != _PRESENT or zlib.crc32(_WHERE.pack(level, index) + node + last) != crc:
        return None
    return bytes(node), bytes(last)


class TreeNodes:
    """The stored nodes of one log's tree; thread-safe, and shared by processes."""

    def __init__(self, directory: Path, leaves: Leaves) -> None:
        self.directory = directory
        self._leaves = leaves
        self._lock = threading.Lock()
        self._fds: dict[int, int | None] = {}
        self._closed = False

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH of leaves ``lo..hi`` (``hi > lo``), a node of the tree of any size >= hi."""
        n = hi - lo
        if n >= WIDTH and n & (n - 1) == 0 and lo % n == 0:
            level = (n.bit_length() - 1) // HEIGHT
            width = WIDTH**level
            return merkle.root_of(self.nodes(level, lo // width, n // width))
        if n <= WIDTH:
            return merkle.root_of(self._leaves(lo, hi))
        k = merkle.split(n)
        return merkle.node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def nodes(self, level: int, start: int, count: int) -> list[bytes]:
        """The level-``level`` nodes ``start..start+count``: stored, or computed and stored."""
        fd = self._file(level)
        data = b""
        if fd is not None:
            with contextlib.suppress(OSError):
                data = os.pread(fd, count * _RECORD.size, len(_HEADER) + start * _RECORD.size)
        nodes = []
        for j in range(count):
            index = start + j
            stored = _stored(data[j * _RECORD.size : (j + 1) * _RECORD.size], level, index)
            last = self._last_leaf(level, index)
            if stored is not None and stored[1] == last:
                nodes.append(stored[0])
                continue
            node = self._compute(level, index)
            if fd is not None:
                with contextlib.suppress(OSError):  # a cache: the next reader computes it
                    offset = len(_HEADER) + index * _RECORD.size
                    os.pwrite(fd, _record(level, index, node, last), offset)
            nodes.append(node)
        return nodes

    def _last_leaf(self, level: int, index: int) -> bytes:
        """The leaf hash of the node's last entry, which its record must name: a record
        left by another history of the log (a restore, a crash that lost entries)
        names another leaf, and is computed again."""
        end = (index + 1) * WIDTH**level
        return self._leaves(end - 1, end)[0]

    def _compute(self, level: int, index: int) -> bytes:
        lo = index * WIDTH
        if level == 1:
            return merkle.root_of(self._leaves(lo, lo + WIDTH))
        return merkle.root_of(self.nodes(level - 1, lo, WIDTH))

    def _path(self, level: int) -> Path:
        return self.directory / f"tree-{level}.log"

    def _file(self, level: int) -> int | None:
        with self._lock:
            if self._closed:
                return None
            if level not in self._fds:
                self._fds[level] = self._open(self._path(level))
            return self._fds[level]

    @staticmethod
    def _open(path: Path) -> int | None:
        """The file, its header written if new; None if it cannot be used."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            header = os.pread(fd, len(_HEADER), 0)
            if not header:
                os.pwrite(fd, _HEADER, 0)  # two processes at once write the same bytes
            elif header != _HEADER:
                os.close(fd)  # another version's, or not ours: leave it alone
                return None
        except OSError:
            os.close(fd)
            return None
        return fd

    def drop(self) -> None:
        """Remove the files: what they summarise may have changed."""
        with self._lock:
            self._close_files()
            for path in self.directory.glob("tree-*.log"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def close(self) -> None:
        with self._lock:
            self._close_files()
            self._closed = True

    def abandon_after_fork(self) -> None:
        """In a forked child (one thread): close the copies without the parent's lock."""
        self._lock = threading.Lock()
        self.close()

    def _close_files(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()


__all__ = ["HEIGHT", "TREE_VERSION", "WIDTH", "TreeNodes"]
