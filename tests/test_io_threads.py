"""The I/O thread pools: what a signal landing mid-call leaves must still shut down."""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import Future

import pytest

from shardvault.io_threads import IoThread, IoThreads


class Terminated(BaseException):
    """What the CLI's SIGTERM handler raises in the main thread, wherever it is."""


def test_a_signal_landing_as_a_thread_starts_leaves_a_pool_that_shuts_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SIGTERM during a get's first shard hand-off: the pool had counted a thread it
    # never started, and shutting it down joined that thread, "RuntimeError: cannot
    # join thread before it is started": a traceback and exit 1, not exit 143
    pool = IoThreads("test-io")
    started = threading.Thread.start

    def interrupted(thread: threading.Thread) -> None:
        raise Terminated

    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(Terminated):
        pool.submit(lambda: None)
    monkeypatch.setattr(threading.Thread, "start", started)
    pool.shutdown(wait=True)


def test_a_pool_still_runs_its_tasks_and_shuts_down() -> None:
    pool = IoThreads("test-io")
    assert [pool.submit(pow, 2, n).result(10) for n in range(4)] == [1, 2, 4, 8]
    pool.shutdown(wait=True)


class _Block:
    """A task's result that can be watched for being let go of."""


def test_an_idle_thread_holds_no_result_of_the_task_it_ran() -> None:
    # its last result stayed a local of the idle thread, for up to a minute: a block a
    # get had let go of (a closed reader's fetch, say), on each idle I/O thread
    pool = IoThreads("test-io")
    try:
        future = pool.submit(_Block)
        result = weakref.ref(future.result(10))
        del future
        end = time.monotonic() + 10
        while pool._idle == 0:  # the thread is idle once it counts itself so
            assert time.monotonic() < end
            time.sleep(0.01)
        assert result() is None
    finally:
        pool.shutdown(wait=True)


class _ShutAsItQueues:
    """A pool's queue that lets the pool shut down (every thread told to end, and ended)
    just as a task submitted before the shutdown is queued."""

    def __init__(self, pool: IoThreads) -> None:
        self._pool = pool
        self._queue = pool._tasks
        self.shut = False

    def put(self, item: object) -> None:
        if item is not None and not self.shut:
            self.shut = True
            self._pool.shutdown(wait=True)
        self._queue.put(item)  # type: ignore[arg-type]

    def get(self, timeout: float | None = None) -> object:
        return self._queue.get(timeout=timeout)


@pytest.mark.parametrize("idle", [True, False], ids=["idle-thread", "no-thread"])
def test_a_task_submitted_as_the_pool_shuts_down_is_refused_not_left_pending(idle: bool) -> None:
    # submit read the shutdown flag, then queued its task: a shutdown in between told
    # every thread to end, an idle one was counted on to run the task, and none ever
    # did, so its future stayed pending and its caller waited for ever; with no thread
    # idle, one was started after the shutdown, which no end was queued for
    pool = IoThreads("test-io", shut=lambda: RuntimeError("the pool was shut down"))
    if idle:
        assert pool.submit(pow, 2, 3).result(10) == 8
    queue = _ShutAsItQueues(pool)
    pool._tasks = queue  # type: ignore[assignment]
    ran: list[int] = []
    with pytest.raises(RuntimeError, match="the pool was shut down"):
        pool.submit(ran.append, 1)
    assert queue.shut
    assert ran == []
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("test-io")]


class _EndsAsItsWaitTimesOut(Future[str]):
    """A task that succeeds just as a wait for it times out: the race, made certain."""

    def result(self, timeout: float | None = None) -> str:
        if not self.done():
            self.set_result("done")
            raise TimeoutError
        return super().result(timeout)


def test_a_task_that_ends_as_the_wait_for_it_times_out_gives_its_result() -> None:
    # the wait's own TimeoutError was raised for a task that had succeeded
    thread = IoThread("shardvault-test")
    try:
        assert thread.wait(_EndsAsItsWaitTimesOut(), 1.0) == "done"
    finally:
        thread.shutdown()
