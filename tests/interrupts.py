"""Deliver an exception to the main thread while it waits to take a lock back.

Group commit's leader is whichever caller comes first, often the main thread,
where Ctrl-C lands. These helpers make a signal interrupt it exactly while it
re-takes the lock it released for the slow work, with another thread inside.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(Exception):
    """Raised by the test's signal handler, standing in for KeyboardInterrupt."""


@contextmanager
def interrupts_on_sigusr1() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def interrupted_when_relocking(lock: Any, work: Callable[..., Any]) -> Callable[..., Any]:
    """`work`, after which another thread holds `lock` while the main thread is signalled."""

    def wrapped(*args: Any) -> Any:
        result = work(*args)
        held = threading.Event()

        def hold_and_signal() -> None:
            with lock:
                held.set()
                time.sleep(0.2)  # the leader is now blocked re-taking the lock
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                time.sleep(0.2)

        threading.Thread(target=hold_and_signal).start()
        held.wait(5)
        return result

    return wrapped


def returns_within(call: Callable[[], object], seconds: float = 5.0) -> bool:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def main_thread_leaves_when_woken(room: Any, leave: Callable[[], bool]) -> list[str]:
    """Patch a WaitRoom so the main thread raises `Interrupted` right after a wait
    returns while `leave()` holds (as Ctrl-C can, once it was woken to lead the next
    write). Returns the names of threads as they start waiting, in order."""
    real_wait = room.wait
    waiting: list[str] = []

    def wait(covered: bool) -> None:
        waiting.append(threading.current_thread().name)
        real_wait(covered)
        if threading.current_thread() is threading.main_thread() and leave():
            raise Interrupted()

    room.wait = wait
    return waiting


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def queue_behind_main(
    waiting: list[str], later: threading.Thread, release: threading.Event
) -> None:
    """In the background: once the main thread waits for the next write, start `later`
    (named "later") so it waits behind it, then let the running write end."""

    def stage() -> None:
        wait_for(lambda: waiting == ["MainThread"])
        time.sleep(0.05)  # main is asleep: it is first in line to lead
        later.start()
        wait_for(lambda: waiting == ["MainThread", "later"])
        time.sleep(0.05)
        release.set()

    threading.Thread(target=stage, daemon=True).start()
