"""A worker pinned to a core keeps every thread there, started before or after.

Each case pins a child process: pinning pytest itself would put the rest of the
suite on one core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from shardvault.errors import InvalidInput
from shardvault.worker_cores import pin_worker


def _in_child(script: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs a process allowed on two CPUs, to see it narrowed to one")
    return cpus


def test_every_thread_before_and_after_is_pinned_to_the_cpu_returned() -> None:
    cpus = _cpus()
    seen = _in_child(
        """
        import json, os, threading
        from shardvault.worker_cores import pin_worker
        go, started = threading.Event(), []
        def wait():
            started.append(threading.get_native_id())
            go.wait()
        before = [threading.Thread(target=wait) for _ in range(3)]
        for thread in before:
            thread.start()
        while len(started) < 3:
            pass
        masks_before = [sorted(os.sched_getaffinity(tid)) for tid in started]
        cpu = pin_worker(1)
        after = threading.Thread(target=wait)
        after.start()
        while len(started) < 4:
            pass
        masks = [sorted(os.sched_getaffinity(tid)) for tid in [*started, threading.get_native_id()]]
        go.set()
        print(json.dumps({"cpu": cpu, "before": masks_before, "masks": masks}))
        """
    )
    assert seen["before"] == [cpus] * 3
    assert seen["cpu"] == cpus[1]
    assert seen["masks"] == [[cpus[1]]] * 5  # three started before, one after, the caller


def test_a_thread_started_while_the_threads_are_pinned_is_pinned_too() -> None:
    cpus = _cpus()
    seen = _in_child(
        """
        import json, os, threading
        from shardvault import worker_cores
        asked, started, go, late = threading.Event(), threading.Event(), threading.Event(), []
        def wait():
            late.append(threading.get_native_id())
            started.set()
            go.wait()
        def starter():  # starts a thread once the pinning has read the list
            asked.wait()
            threading.Thread(target=wait).start()
            go.wait()
        threading.Thread(target=starter).start()
        listed = worker_cores._threads
        def threads():
            found = listed()
            if not asked.is_set():  # the race, made certain
                asked.set()
                started.wait()
            return found
        worker_cores._threads = threads
        cpu = worker_cores.pin_worker(1)
        mask = sorted(os.sched_getaffinity(late[0]))
        go.set()
        print(json.dumps({"cpu": cpu, "mask": mask}))
        """
    )
    assert seen == {"cpu": cpus[1], "mask": [cpus[1]]}


def test_index_counts_round_the_cpus_the_process_may_use() -> None:
    cpus = _cpus()
    allowed = cpus[1:]  # a process already kept off the first CPU chooses among the rest
    seen = _in_child(
        f"""
        import json, os
        from shardvault.worker_cores import pin_worker
        os.sched_setaffinity(0, {set(allowed)!r})
        cpu = pin_worker({len(allowed) + 0})
        print(json.dumps({{"cpu": cpu, "mask": sorted(os.sched_getaffinity(0))}}))
        """
    )
    assert seen == {"cpu": allowed[0], "mask": [allowed[0]]}


@pytest.mark.parametrize("index", [-1, 1.0, True, "0", None])
def test_a_worker_index_that_is_not_a_count_is_refused(index: object) -> None:
    affinity = os.sched_getaffinity(0)
    with pytest.raises(InvalidInput, match="worker index"):
        pin_worker(index)  # type: ignore[arg-type]
    assert os.sched_getaffinity(0) == affinity


def test_where_threads_cannot_be_pinned_the_process_runs_as_it_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    affinity = os.sched_getaffinity(0)
    monkeypatch.delattr(os, "sched_setaffinity")
    assert pin_worker(0) is None
    assert os.sched_getaffinity(0) == affinity
