"""A vault closes once, however many threads close it at once (`Vault.close`).

Each part's own second close returns at once, and so did the vault's while the
first was still closing: its caller might remove the files under it. A close
called while another is under way on another thread therefore waits for it, and
raises what it raised; but not for ever: a first close stuck on a hung disk (a
catalog's, the directory's) would hold every other for good. It waits as long as
the first may take by its own bounds (`Vault.close`), then gives up on it as the
first gives up on a store whose close hangs: it returns, and the user is told
(`NodeDeadline.hint_notices`).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable


class CloseOnce:
    """Runs ``close`` once; a call while it runs on another thread waits for it, up to
    ``bound`` seconds after it began, then tells ``given_up`` the bound and returns."""

    def __init__(
        self, close: Callable[[], None], bound: float, given_up: Callable[[float], None]
    ) -> None:
        self._close = close
        self.bound = bound
        self._given_up = given_up
        self._lock = threading.Lock()  # held for a moment only
        self._ended: threading.Event | None = None  # set once the close under way ends
        self._thread: int | None = None  # the thread it is under way on
        self._began = 0.0  # when it began (`time.monotonic`)
        self._error: Exception | None = None  # what it raised

    def __call__(self) -> None:
        with self._lock:
            ended = self._ended
            if ended is not None and ended.is_set():
                return
            first = ended is None
            if ended is None:
                ended = self._ended = threading.Event()
                self._thread = threading.get_ident()
                self._began = time.monotonic()
        if first:
            self._run(ended)
        elif self._thread != threading.get_ident():  # within it (a signal handler's): it goes on
            self._wait(ended)

    def _run(self, ended: threading.Event) -> None:
        try:
            self._close()
        except Exception as exc:
            self._error = exc
            raise
        except BaseException:
            self._ended = None  # a signal: the next close finishes it
            raise
        finally:
            ended.set()

    def _wait(self, ended: threading.Event) -> None:
        if not ended.wait(max(0.0, self._began + self.bound - time.monotonic())):
            self._given_up(self.bound)
        elif self._ended is not ended:  # a signal ended it: finish it
            self()
        elif self._error is not None:
            raise _again(self._error) from self._error


def _again(error: Exception) -> Exception:
    """The first close's error anew, of its class (a caller catching StorageError still
    does), for a close that waited for it: one object raised in several threads is
    shared by them, and its traceback grows at each raise."""
    try:
        return copy.copy(error)  # its class, arguments and attributes; no traceback
    except Exception:  # a class whose __init__ does not take its own args
        again = type(error).__new__(type(error), *error.args)
        again.__dict__.update(vars(error))
        return again
