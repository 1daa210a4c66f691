"""Threads for I/O that may never return: none waits behind another, none holds up exit.

A call into a hung disk (an fdatasync, pread or open on a dying disk or a
hard-mounted NFS share) cannot be interrupted, so the thread in it is lost
until the disk answers. A bounded pool fills with such threads and every later
task queues behind them; a non-daemon thread makes the process's exit wait for
the disk. `IoThreads` has neither problem; `IoThread` is one such thread whose
caller can tell a task stuck on a hung disk from one that is merely long.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")
_IDLE_SECONDS = 60.0  # an idle I/O thread ends after this long


def _shut() -> BaseException:
    return RuntimeError("cannot schedule new futures after shutdown")


_Task = tuple[Future[object], Callable[..., object], tuple[object, ...], dict[str, object]]


class IoThreads(Executor):
    """Threads for shard I/O: a task never waits for a thread a hung disk holds.

    A thread is started whenever none is idle: a bounded pool filled with threads
    stuck on one node, and every put and get of every cell then queued behind
    them. The callers bound the number: each waits for its own few tasks, and no
    new task goes to a node once it is marked hung. Idle threads are reused (no
    hand-off is added to what a bounded pool costs) and end after a minute.
    Daemon threads: one stuck on a hung disk must not hold up the process's exit.
    """

    def __init__(self, name: str, shut: Callable[[], BaseException] = _shut) -> None:
        """``shut``: the error a task submitted after shutdown gets, in its owner's terms."""
        self._name = name
        self._shut_error = shut
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        # idle threads no task has claimed: a count under its own lock, as only ever
        # taken without waiting (a threading.Semaphore cost a put about 7 k instructions)
        self._idle = 0
        self._idle_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _threads and _shut: not taken per task
        self._threads: set[threading.Thread] = set()
        self._shut = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        if self._shut:
            raise self._shut_error()
        future: Future[_T] = Future()
        self._tasks.put((future, fn, args, kwargs))  # type: ignore[arg-type]
        if not self._claim_idle():
            self._start_thread()
        # shut down since the check (no lock is taken per task): every thread may have
        # been told to end before the task was queued, and none would ever run it
        if self._shut and future.cancel():
            raise self._shut_error()
        return future

    def _claim_idle(self) -> bool:
        """Take one idle thread's promise, if there is one (never waits)."""
        with self._idle_lock:
            if self._idle:
                self._idle -= 1
                return True
            return False

    def _start_thread(self) -> None:
        with self._lock:
            if self._shut:  # no end is queued for it: it would idle on, or take another's
                return
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self._claim_idle():  # nobody counts on this thread: end
                    break
                continue  # a task was promised to an idle thread: it is on its way
            if task is None:
                break
            future, fn, args, kwargs = task
            del task
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result  # an idle thread would hold it (a block a get let go of)
            del future, fn, args, kwargs
            with self._idle_lock:
                self._idle += 1
        with self._lock:
            self._threads.discard(threading.current_thread())

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop taking tasks; with ``wait``, wait for those running, until ``timeout``
        seconds at most if given (a task may be stuck on a disk no one saw hang yet:
        its daemon thread is left to it, as a hung node's are)."""
        with self._lock:
            self._shut = True
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        if wait:
            end = None if timeout is None else time.monotonic() + timeout
            for thread in threads:
                # not one a signal stopped before it started: join would raise
                if thread.is_alive():
                    thread.join(None if end is None else max(0.0, end - time.monotonic()))


class Stalled(Exception):
    """An `IoThread` did not run at all for a whole wait: its task is stuck in one call."""


class IoThread(Executor):
    """One daemon thread running its tasks in turn, for a caller whose calls must share a
    thread (a store's `sync` covers what its calling thread wrote) and may never return.

    `wait` gives up on a task only once the thread has not run at all for the time
    given: a call stuck on a hung disk sleeps in the kernel without ever being
    scheduled, while a long task that makes progress (a listing of a large node,
    each read a short wait) is scheduled again and again, and is waited for.
    """

    def __init__(self, name: str) -> None:
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        self._tasks.put((future, fn, args, kwargs))  # type: ignore[arg-type]
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args, kwargs = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            del task, future, fn, args, kwargs

    def wait(self, future: Future[_T], seconds: float, since: float | None = None) -> _T:
        """The task's result, waited for while the thread runs; raises `Stalled` once it
        has not run for `seconds`. Where the kernel does not say how often a thread
        ran (no /proc/self/task/ID/schedstat), once the task has taken `seconds`.
        ``since`` (`time.monotonic`): when the caller began waiting, if before this call:
        one waiting for several threads in turn gives up on each stalled since then at
        one common end, not a whole wait after its turn came."""
        began = time.monotonic() if since is None else since
        step = seconds / 4
        try:  # most calls: the thread's counts are not read
            return future.result(max(0.0, began + step - time.monotonic()))
        except TimeoutError:
            if future.done():  # it ended as the wait gave up: its own outcome, not the wait's
                return future.result()
        seen, progress = self._runs(), began
        while True:
            try:
                return future.result(step)
            except TimeoutError:
                if future.done():
                    return future.result()
            now = self._runs()
            if now is not None and now != seen:
                seen, progress = now, time.monotonic()
            elif time.monotonic() - progress >= seconds:
                raise Stalled(f"{self._thread.name}: no progress for {seconds:g} s")

    def _runs(self) -> bytes | None:
        """The thread's CPU time and how many times it was scheduled, as the kernel says."""
        try:
            with open(f"/proc/self/task/{self._thread.native_id}/schedstat", "rb") as stat:
                return stat.read()
        except OSError:
            return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop once the tasks queued have run; never waits (the thread may be stuck)."""
        self._tasks.put(None)
