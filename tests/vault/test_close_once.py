"""A close that waited for the one under way gets that close's error anew, its own object.

The first close's error was raised as is in every thread that waited for it: the
threads shared one mutable exception, whose traceback grew at each raise with
frames of every thread that raised it.
"""

from __future__ import annotations

import threading
import time
import traceback

import pytest

from conftest import frames_of
from shardvault.errors import StorageError
from shardvault.vault.close_once import CloseOnce


class _NamedError(Exception):
    """An error whose __init__ does not take its own args (they are made of its own)."""

    def __init__(self, part: str, code: int) -> None:
        super().__init__(f"{part}: failed with {code}")
        self.part = part


ERRORS = [
    StorageError("the directory's close failed"),
    OSError(5, "Input/output error", "catalog.sqlite"),
    _NamedError("the audit log", 5),
]


def _waits_for_the_first(thread: threading.Thread) -> bool:
    return CloseOnce._wait.__code__ in {frame.f_code for frame in frames_of(thread)}


def _closers_named_in(error: BaseException) -> set[str]:
    """The names of the test's threads whose frames the error's traceback holds."""
    return {
        frame.f_locals["name"]
        for frame, _ in traceback.walk_tb(error.__traceback__)
        if frame.f_code is _close_in.__code__
    }


def _close_in(name: str, close: CloseOnce, raised: dict[str, BaseException]) -> None:
    try:
        close()
    except Exception as exc:
        raised[name] = exc


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_each_close_that_waited_raises_the_first_closes_error_anew(error: Exception) -> None:
    release = threading.Event()

    def failing_close() -> None:
        release.wait(30)
        raise error

    close = CloseOnce(failing_close, 60.0, lambda seconds: None)
    raised: dict[str, BaseException] = {}
    threads = {
        name: threading.Thread(target=_close_in, args=(name, close, raised))
        for name in ("first", "second", "third")
    }
    threads["first"].start()
    while not release.is_set() and CloseOnce._run.__code__ not in {
        frame.f_code for frame in frames_of(threads["first"])
    }:
        time.sleep(0.01)
    for name in ("second", "third"):
        threads[name].start()
        while threads[name].is_alive() and not _waits_for_the_first(threads[name]):
            time.sleep(0.01)
    release.set()
    for thread in threads.values():
        thread.join(10)

    assert raised["first"] is error
    for name in ("second", "third"):
        again = raised[name]
        assert again is not error, f"the {name} close raised the first's own object"
        assert type(again) is type(error) and str(again) == str(error)  # a filename too
        assert vars(again) == vars(error)  # a filename, an attribute of its own
        assert again.__cause__ is error
    assert raised["second"] is not raised["third"]
    # no traceback holds another thread's frames: none grew as another raised it
    assert {name: _closers_named_in(exc) for name, exc in raised.items()} == {
        "first": {"first"},
        "second": {"second"},
        "third": {"third"},
    }
