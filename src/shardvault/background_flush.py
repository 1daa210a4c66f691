"""Background flushes: a file being written reaches the disk as it grows.

A large shard's pages are flushed by a shared pool of daemon threads while the
writer encodes the next segments, so its closing fsync finds little left; the
writer never waits on the disk queue, and a flush stuck on a hung disk holds up
neither another node's writer nor the process's exit (`BackgroundFlush`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

from shardvault.io_threads import IoThreads

_flush_pool: IoThreads | None = None
_flush_pool_lock = threading.Lock()
_FLUSH_THREADS = 8
_flush_slots = threading.BoundedSemaphore(_FLUSH_THREADS)  # pool threads not flushing


def _forget_flush_pool_after_fork() -> None:
    """A forked child has none of its parent's threads, and their locks may be held:
    it starts its own flush pool."""
    global _flush_pool, _flush_pool_lock, _flush_slots
    _flush_pool, _flush_pool_lock = None, threading.Lock()
    _flush_slots = threading.BoundedSemaphore(_FLUSH_THREADS)


os.register_at_fork(after_in_child=_forget_flush_pool_after_fork)


def _background_pool() -> IoThreads:
    """Daemon threads: a flush stuck on a hung disk must not hold up the process's exit
    (the writer's own closing fsync is what its durability rests on)."""
    global _flush_pool
    with _flush_pool_lock:
        if _flush_pool is None:
            _flush_pool = IoThreads("shardvault-writeback")
        return _flush_pool


def _start_flush(fd: int) -> Future[None] | None:
    """``fdatasync(fd)`` on a pool thread free now; None if every one is flushing.

    Never queued: the pool is shared by every node, and a flush queued behind
    those of a node whose disk hung would never start, so its writer, waiting
    for it at commit, hung with them. Skipped, it is done by the writer's
    closing fsync, on its own disk.
    """
    slots = _flush_slots
    if not slots.acquire(blocking=False):
        return None
    try:
        return _background_pool().submit(_flush_and_free, fd, slots)
    except RuntimeError:  # the interpreter is shutting down: the closing fsync does it
        slots.release()
        return None


def _flush_and_free(fd: int, slots: threading.BoundedSemaphore) -> None:
    try:
        os.fdatasync(fd)
    finally:
        slots.release()


class BackgroundFlush:
    """Flushes a file being written to disk as it grows, without making its writer wait.

    Every `every` bytes it starts an ``fdatasync`` in a shared thread pool
    unless the last one is still running (or no thread of the pool is free:
    `_start_flush`), so a large shard's pages reach the disk while the CPU
    encodes the next segments and the closing fsync finds little left. The
    writer never blocks on the disk queue: with ``sync_file_range`` kicks it
    did, and 256 MiB puts were about 30 % slower (docs/performance.md). An
    error of a background flush is kept for `finish`, which the writer must
    call before its own fsync and close: the kernel reports a write-back error
    to an open file once, so that fsync would not see it again.
    """

    def __init__(self, fd: int, every: int) -> None:
        self._fd = fd
        self._every = every
        self._unflushed = 0
        self._running: Future[None] | None = None
        self._error: BaseException | None = None

    def wrote(self, nbytes: int) -> None:
        """Count bytes just written; start a flush if enough have piled up."""
        self._unflushed += nbytes
        if self._unflushed < self._every:
            return
        if self._running is not None:
            if not self._running.done():
                return  # the disk is behind: the next write tries again
            self._collect()
        self._running = _start_flush(self._fd)
        if self._running is not None:  # else no thread is free: the next write tries again
            self._unflushed = 0

    def _collect(self) -> None:
        assert self._running is not None
        error = self._running.exception()
        self._running = None
        self._error = self._error or error

    def wait(self) -> BaseException | None:
        """Wait for the running flush; the first error any flush had, if one did."""
        if self._running is not None:
            self._collect()
        return self._error

    def finish(self) -> None:
        """Wait for the running flush; raise the first error any flush had."""
        error = self.wait()
        if error is not None:
            raise error
