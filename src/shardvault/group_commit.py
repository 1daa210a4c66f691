"""Group commit: one flush makes many small writes durable at once.

A durable small write costs a flush to stable storage; paid per write, that
caps small puts at a few hundred a second here. Instead each write takes a
ticket (``note_write``); ``sync(ticket)`` returns once a flush that began after
the write has ended. The first caller that finds no flush running runs one
itself, covering every write noted before it began; callers arriving meanwhile
wait and share the next. Noting does not flush, so a put appends all n shards
before the one flush that covers them. No flusher thread: handing each sync to
one cost two thread switches per request.

`filesystem_sync` is the process's group commit for a filesystem (one syncfs
for all its writers): pack appends on every node and catalog commits share it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardvault.errors import StorageError


class WaitRoom:
    """Where a group commit's callers wait, split by the write that will answer them.

    With one condition, the end of every write woke all waiters and those that
    needed the next write went back to sleep: with 16 threads a put paid about
    ten wasted thread switches. Here the end of a write wakes the callers it
    covered, and one caller waiting for the next write, to lead it.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._covered = threading.Condition(lock)  # answered by the running write
        self._later = threading.Condition(lock)  # need a write not yet started
        self._sleeping = 0  # callers in `wait`, on either condition (changed under the lock)

    def wait(self, covered: bool) -> None:
        """Sleep (holding the lock) until the running write ends, or the next one may start."""
        self._sleeping += 1
        try:
            (self._covered if covered else self._later).wait()
        finally:  # the lock is held again here, as around the wait
            self._sleeping -= 1

    def write_ended(self, took_later: bool = False) -> None:
        """Holding the lock: wake the callers the write covered and the next leader.

        `took_later`: the write also took callers who were waiting for the next
        one; they are all woken (those still waiting sleep again), since the
        one woken to lead may be among those already answered. With nobody
        asleep, nobody is notified: a Condition's notify is Python code that
        costs about 2.5 k instructions even then, and a write that nobody
        waited for (every small request's, without load) ended with two.
        """
        ended, self._covered = self._covered, self._later
        self._later = ended
        if not self._sleeping:
            return
        ended.notify_all()  # takes its waiters off it: it can serve the generation after
        if took_later:
            self._covered.notify_all()
        else:
            self._covered.notify()

    def hand_on(self) -> None:
        """Holding the lock, no write running: a caller leaving by an exception (Ctrl-C)
        may have been the one woken to lead; wake another (every waiter is covered
        now), or the rest would sleep until some later caller writes."""
        self._covered.notify()


class GroupSync:
    """Coalesces durability requests for one file or filesystem into as few flushes as possible."""

    def __init__(self, flush: Callable[[], None], name: str = "flush") -> None:
        self._flush = flush
        self._name = name
        self._lock = threading.Lock()
        self._room = WaitRoom(self._lock)
        self._written = 0
        self._settled = 0  # every ticket up to here has had its flush, good or failed
        self._flushing = False
        self._target = 0  # what the running flush covers
        self._failed: list[tuple[int, int, str]] = []  # (after, upto, why): flushes that failed
        self._failures = 0  # how many flushes have failed: see `failures`
        self._closed = False

    def failures(self) -> int:
        """How many flushes have failed so far: read it before a write, and pass it to
        `note_write` after. A flush that failed while the write was being made may have
        dropped its pages, though its ticket, noted after, is past the failed range.
        No lock: an int read."""
        return self._failures

    def note_write(self, failures: int | None = None) -> int:
        """Take a ticket for a write just made; ``sync`` it to make it durable.

        `failures`: what `failures` said before the write began; if a flush has
        failed since, the write's ticket fails with it.
        """
        with self._lock:
            if self._closed:
                raise StorageError(f"{self._name}: closed")
            self._written += 1
            if failures is not None and failures != self._failures:
                self._fail(self._written - 1, self._failed[-1][2])
            return self._written

    def sync(self, upto: int | None = None, since: int | None = None) -> None:
        """Return once the write with ticket `upto` (default: every one so far) is durable.

        `since`: the first ticket of a caller's run of writes ending at `upto`; a
        failed flush that covered any ticket of the run raises too, even if a later
        one succeeded for the rest.
        """
        with self._lock:
            wanted = self._written if upto is None else min(upto, self._written)
            first = wanted if since is None else min(since, wanted)
            try:
                while True:
                    for after, until, why in self._failed:
                        if after < wanted and first <= until:
                            raise StorageError(f"{self._name}: {why}")
                    if self._settled >= wanted:
                        return
                    if self._flushing:
                        self._room.wait(covered=wanted <= self._target)
                    else:
                        self._flush_now()
            except BaseException:
                if not self._flushing:
                    self._room.hand_on()
                raise

    def _flush_now(self) -> None:
        """One flush for every write noted so far; called holding the lock, nobody flushing."""
        after, target = self._settled, self._written
        failure = ""
        interrupted: BaseException | None = None
        self._flushing, self._target = True, target
        self._lock.release()
        try:
            self._flush()
        except (OSError, StorageError) as exc:
            failure = str(exc)
        except BaseException as exc:  # Ctrl-C in this caller: the next waiter flushes
            interrupted = exc
        pending = reacquire(self._lock)
        self._flushing = False
        if interrupted is None:
            if failure:
                self._failures += 1
                self._fail(after, failure)
            self._settled = target
        self._room.write_ended()
        raise_now = interrupted or pending
        if raise_now is not None:
            raise raise_now

    def _fail(self, after: int, why: str) -> None:
        """Holding the lock: a flush failed; every write noted until now may be lost.

        Those writes may be lost (the kernel can drop pages a failed flush could
        not write): report them, never call them durable. Not only those the flush
        was for: a write made while it ran may have had its pages written back
        and failed too, and the error, reported once, was this flush's; the next
        flush would succeed. One entry per run of failures, so a dead disk does
        not make every sync read a longer list.
        """
        if self._failed and self._failed[-1][1] >= after:
            start, _, first_why = self._failed[-1]
            self._failed[-1] = (start, self._written, first_why)
        else:
            self._failed.append((after, self._written, why))

    def close(self) -> None:
        """Flush what is pending (writes nobody waited for); refuse new writes."""
        with self._lock:
            self._closed = True
            while self._flushing:
                self._room.wait(covered=True)
            if self._settled < self._written:
                self._flush_now()


def reacquire(lock: threading.Lock | threading.Condition) -> BaseException | None:
    """Take back a lock released for slow work, even if Ctrl-C arrives while waiting.

    A group commit's leader must restore the state others wait on before
    anything else happens; an exception raised meanwhile is returned for the
    caller to raise once it has.
    """
    pending: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return pending
        except BaseException as exc:
            pending = pending or exc


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    """A libc function with its signature, or None where libc lacks it."""
    library = ctypes.util.find_library("c")
    if not library:
        return None
    try:
        func = ctypes.CDLL(library, use_errno=True)[name]
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


_syncfs = _libc_function("syncfs", [ctypes.c_int])


def sync_filesystem(fd: int) -> None:
    """syncfs(2) on the filesystem of the open descriptor `fd` (the global sync(2) where
    libc lacks it); OSError if a write-back error happened since `fd` last said so."""
    if _syncfs is None:
        os.sync()
        return
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_devices: dict[int, GroupSync] = {}
_devices_lock = threading.Lock()
_descriptors: list[int] = []  # one per filesystem, open for the process's life


def _forget_group_syncs_after_fork() -> None:
    """A forked child has none of its parent's threads, and their locks may be held:
    it starts its own group syncs (and opens its own descriptors: the parent's,
    inherited, would report a write-back error to whichever process asks first)."""
    global _devices_lock
    _devices.clear()
    _devices_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_group_syncs_after_fork)


def filesystem_sync(path: Path) -> GroupSync:
    """The process's group commit for the filesystem holding `path`: one syncfs for all.

    Pack appends on every node and catalog commits of a deployment on one disk
    share it, so a put's n shards need one flush, not n. It flushes through a
    descriptor of the first directory it was asked for on that filesystem, kept
    open: syncfs reports a write-back error to each descriptor open when it
    happened, once, so one opened for each flush would miss an error another
    process's sync saw first and call lost writes durable. Held open, it also
    outlives its directory (a deployment closed and removed) and stays on its
    filesystem (another mounted over the path); and it keeps that filesystem's
    device number taken, so a filesystem mounted after it is unmounted gets
    another and is not taken for it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    device = os.fstat(fd).st_dev
    with _devices_lock:
        found = _devices.get(device)
        if found is None:
            found = _devices[device] = GroupSync(
                lambda: sync_filesystem(fd), f"filesystem sync of {path}"
            )
            _descriptors.append(fd)
            return found
    os.close(fd)
    return found
