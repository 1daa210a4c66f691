"""Request ids: unique per request, and never repeated by a forked child."""

from __future__ import annotations

import os
import re

from shardvault.model import local_context, new_request_id


def test_request_ids_are_32_hex_digits_and_distinct() -> None:
    ids = [new_request_id() for _ in range(1000)] + [local_context().request_id]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_ids_of_its_own() -> None:
    before = new_request_id()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.close(write_end)
    after = new_request_id()
    assert from_child[:16] != before[:16]  # a counter alone would repeat the parent's next id
    assert len({before, from_child, after}) == 3
