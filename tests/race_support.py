"""Helpers for tests of two actors of one cell at once (two gcs, a gc and a forget, a
repair beside a collector): what the deployment holds, counted apart from any report,
and a hook that lets another actor go at a chosen moment in the first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shardvault.catalog.port import Catalog
from shardvault.config import load
from shardvault.vault import Vault

LATE = 10.0  # seconds an actor waits for the other it let go (`other_goes_within`)


def held(config: Path) -> tuple[int, set[tuple[str, str]]]:
    """Counted apart from any report: the catalog rows of every cell, and every shard
    name its nodes hold."""
    rows, shards = 0, set()
    with Vault.open(load(config)) as vault:
        for cell in vault.cells.values():
            catalog = cell.catalog
            rows += len(catalog.versions_with(catalog.known_object_ids()))
            for node, store in cell.stores.items():
                shards.update((node, name) for name in store.names())
    return rows, shards


def other_goes_within(
    catalog: Catalog,
    call: str,
    run: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
    *,
    found: bool,
) -> threading.Thread:
    """RUN (another actor) on its thread, let go within the first CALL of CATALOG
    (once it has found something, if FOUND; before it looks, if not) and waited for
    there, for up to `LATE` seconds, before the caller goes on: unless the two take
    turns, the other then collects what the caller is amid collecting."""
    method = getattr(catalog, call)
    other = threading.Thread(target=run)

    def let_the_other_go() -> None:
        if other.ident is None:
            other.start()
            other.join(LATE)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if not found:
            let_the_other_go()
        answer = method(*args, **kwargs)
        if found and answer:
            let_the_other_go()
        return answer

    monkeypatch.setattr(catalog, call, hooked)
    return other
