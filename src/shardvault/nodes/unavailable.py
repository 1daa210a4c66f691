"""A node that cannot be used: one bad directory must not stop the whole vault.

A cell's node stores are opened when it is first needed. A node whose directory is
missing, is a file or cannot be read, or a node a manifest names but the
config no longer lists, is represented by this store: every operation raises
`StorageError` with the reason. A read then counts that node's shards as
damage and reads around them (any m of n may be lost); a write placed on it
fails naming it; `shardvault nodes` shows why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

from shardvault.errors import StorageError


class UnavailableStore:
    def __init__(self, node_id: str, reason: str) -> None:
        self.node_id = node_id
        self.reason = reason

    def _refuse(self) -> NoReturn:
        raise StorageError(f"node {self.node_id} is unavailable: {self.reason}")

    def open_writer(self, name: str) -> NoReturn:
        self._refuse()

    def open_reader(self, name: str, location: str | None = None) -> NoReturn:
        self._refuse()

    def intact(self, name: str, location: str | None = None) -> NoReturn:
        self._refuse()

    def read_cached(self, name: str, location: str | None, length: int) -> NoReturn:
        self._refuse()

    def has_trace(self, name: str) -> NoReturn:
        self._refuse()

    def delete(self, name: str, location: str | None = None) -> NoReturn:
        self._refuse()

    def names(self) -> Iterator[str]:
        self._refuse()

    def strays(self) -> NoReturn:
        self._refuse()

    def sync(self) -> None:
        """Nothing was ever committed here, so nothing is owed."""

    def probe(self) -> NoReturn:
        self._refuse()

    def collect_temporaries(self, older_than: float) -> NoReturn:
        self._refuse()

    def drop_caches(self) -> None:
        """Nothing is kept."""

    def compact(self) -> NoReturn:
        self._refuse()

    def close(self) -> None:
        """Nothing is open."""
