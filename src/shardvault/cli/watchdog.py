"""A command stuck on a disk that hangs gives up: one line and exit 1, not a wait for ever.

A node's shard I/O has a deadline of its own (vault/deadline.py). The rest of a
command's disk calls run on its own thread: the catalogs, the directory, the
approvals and principals (SQLite), the audit logs (fsync), the keyring, the config,
`get -o`'s file. SQLite and fsync block in C, and a call into a hung disk (a dead
NFS server's, a dying disk's) cannot be interrupted, so the command cannot raise an
error out of it. A command run as a process of its own is watched instead: once its
thread has been asleep in one uninterruptible call (state `D`) without being
scheduled once for `storage.state_timeout` (its scheduling count,
`/proc/self/task/ID/schedstat`, unchanged, as `io_threads.IoThread.wait` tells a
stuck call), the watchdog prints the file the call is on, as the kernel says, and
ends the process with exit 1. A disk that answers slowly wakes the thread at every
request; a wait that is not a disk's (a lock, a pipe, stdin, a node's I/O thread,
SQLite's busy handler) sleeps interruptibly or wakes, and is never taken for one.
Nothing is added to a request's path: the watchdog reads two files of /proc every
quarter deadline, or every second if that is sooner. Ended so, a command leaves what
a kill -9 leaves, which every write is made to survive (docs/architecture.md, "Cells").
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import suppress
from typing import NoReturn

from shardvault.model import named

_AT_FDCWD = 0xFFFFFF9C  # -100 as the kernel shows a call's first argument
_PAGE = 4096
_POLL = 1.0  # seconds between looks at most


class Watchdog:
    """Watches the thread that made it; `seconds` may change (the config names it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._task = f"/proc/self/task/{threading.get_native_id()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="shardvault-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        seen, since = None, time.monotonic()
        while not self._stop.wait(min(self.seconds / 4, _POLL)):  # a new deadline counts
            asleep = self._asleep()
            if asleep is None or asleep != seen:
                seen, since = asleep, time.monotonic()
            elif time.monotonic() - since >= self.seconds and not self._stop.is_set():
                self._give_up()

    def _asleep(self) -> bytes | None:
        """The thread's scheduling counts while it sleeps uninterruptibly, else none."""
        try:
            with open(f"{self._task}/stat", "rb") as stat:
                state = stat.read().rpartition(b")")[2].split()[0]
            with open(f"{self._task}/schedstat", "rb") as counts:
                return counts.read() if state == b"D" else None
        except (OSError, IndexError):  # no such file: nothing is taken for a hang
            return None

    def _give_up(self) -> NoReturn:
        """Say which file's disk did not answer, and end the process: the stuck thread
        cannot be freed. The line is written by a thread of its own, waited for a
        second: stderr may be a file on that disk."""
        line = (
            f"error: no answer within {self.seconds:g} s (storage.state_timeout) from the "
            f"disk of {_waited_on(self._task)}, which may hang: the command gave up\n"
        )
        writer = threading.Thread(target=_write_error, args=(line,), daemon=True)
        writer.start()
        writer.join(1.0)
        os._exit(1)


def _write_error(line: str) -> None:
    with suppress(OSError):  # stderr closed: the exit code still says it
        os.write(2, line.encode(errors="backslashreplace"))


def _waited_on(task: str) -> str:
    """The file the thread's call is on (its descriptor's, or the path it names, as the
    kernel shows the call), or what it is if the kernel does not say."""
    try:
        with open(f"{task}/syscall", "rb") as call:
            fields = call.read().split()
        first, second = int(fields[1], 16), int(fields[2], 16)
        if first == _AT_FDCWD:
            path = os.fsdecode(_string_at(second))
            return named(os.path.join(os.getcwd(), path))
        return named(os.readlink(f"/proc/self/fd/{first}"))
    except (OSError, ValueError, IndexError, OverflowError):
        return "a file it could not name"


def _string_at(address: int) -> bytes:
    """The C string at ADDRESS in this process (a path the call was given), read a page
    at a time: the next page may not be mapped."""
    fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        read = b""
        while b"\0" not in read and len(read) < _PAGE:
            chunk = os.pread(fd, _PAGE - (address + len(read)) % _PAGE, address + len(read))
            if not chunk:
                break
            read += chunk
    finally:
        os.close(fd)
    if b"\0" not in read:
        raise ValueError("no path there")
    return read[: read.index(b"\0")]
