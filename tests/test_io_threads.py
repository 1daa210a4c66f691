"""The I/O thread pools: what a signal landing mid-call leaves must still shut down."""

from __future__ import annotations

import threading

import pytest

from shardvault.io_threads import IoThreads


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
