"""`Vault.delete(ref, if_match=N)`: the whole object deleted only if N is still its current
version, so a client deletes "only if nobody wrote since I read", as put's if_match
writes; the check and the mark are one catalog transaction (tests/catalog/)."""

from __future__ import annotations

import pytest

from shardvault.errors import Conflict, InvalidInput, NotFound
from shardvault.model import ObjectRef
from shardvault.vault import Vault


def test_a_delete_if_match_of_a_version_since_replaced_deletes_nothing(
    vault: Vault, alice: ObjectRef
) -> None:
    vault.put(alice, b"read by the client")
    seen = vault.stat(alice).version
    vault.put(alice, b"written by another since")
    with pytest.raises(Conflict, match=f"expected version {seen}, current is {seen + 1}"):
        vault.delete(alice, if_match=seen)
    assert vault.get(alice) == b"written by another since"
    assert vault.get(alice, seen) == b"read by the client"
    assert vault.delete(alice, if_match=seen + 1) == 2
    with pytest.raises(NotFound):
        vault.get(alice)


def test_a_delete_if_match_of_a_key_with_no_version_is_a_conflict(
    vault: Vault, alice: ObjectRef
) -> None:
    with pytest.raises(Conflict, match="expected version 3, current is 0"):
        vault.delete(alice, if_match=3)
    vault.put(alice, b"once")
    vault.delete(alice)
    with pytest.raises(Conflict, match="expected version 1, current is 0"):
        vault.delete(alice, if_match=1)


@pytest.mark.parametrize(
    ("version", "if_match", "said"),
    [
        (None, 0, "out of range: a delete's --if-match takes a version from 1"),
        (None, -1, "out of range"),
        (None, 2**63, "out of range"),
        (None, True, "out of range"),
        (None, 1.0, "out of range"),
        (None, "1", "out of range"),
        (1, 1, "--if-match deletes the whole object"),
    ],
    ids=["zero", "negative", "too-large", "bool", "float", "str", "with-a-version"],
)
def test_a_delete_if_match_that_cannot_mean_anything_is_invalid_input(
    vault: Vault, alice: ObjectRef, version: int | None, if_match: object, said: str
) -> None:
    vault.put(alice, b"kept")
    with pytest.raises(InvalidInput, match=said):
        vault.delete(alice, version, if_match=if_match)  # type: ignore[arg-type]
    assert vault.get(alice) == b"kept"
