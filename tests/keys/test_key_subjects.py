"""The keyring's record of whose key is whose: private, first-wins, made once, and given
once for the keys a keyring held before it kept the record."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from shardvault.errors import AccessDenied, KeyUnavailable, NewerFormat, SubjectForgotten
from shardvault.keys import hierarchy
from shardvault.keys.key_subjects import key_subjects_path
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import CustodianGate
from shardvault.keys.tombstones import tombstones_path
from shardvault.model import Justification

US = KeyScope("intl", "US")
WHY = Justification("svc-feed", "serve-feed", "req-1", "US")


def approving(subject: str) -> CustodianGate:
    """A gate that allows everything; a destroy's approval names ``subject``."""

    def gate(
        operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        return subject if operation is KeyOperation.DESTROY else None

    return gate


def user_version(path: Path, version: int | None = None) -> int:
    with sqlite3.connect(path) as db:
        if version is not None:
            db.execute(f"PRAGMA user_version={version}")
        return int(db.execute("PRAGMA user_version").fetchone()[0])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


def test_the_record_is_private_and_names_no_subject(path: Path) -> None:
    KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice-smith")
    record = key_subjects_path(path)
    assert record.name == "keyring.subjects.sqlite"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert b"alice-smith" not in record.read_bytes()
    assert user_version(tombstones_path(path)) == 2
    assert not KeyringCustodian(path).needs_subjects()  # a new keyring: no earlier key


def from_before(path: Path) -> dict[str, tuple[bytes, bytes]]:
    """A keyring as a shardvault from before the record left it: keys of alice and bob,
    tombstones at version 1, no record of whose key is whose."""
    custodian = KeyringCustodian(path)
    keys = {}
    for subject in ("alice", "bob", "carol"):
        key = hierarchy.new_key()
        keys[subject] = key, custodian.wrap(US, f"kid-{subject}", key, WHY, subject=subject)
    key_subjects_path(path).unlink()
    user_version(tombstones_path(path), 1)
    return keys


def test_the_keys_of_a_keyring_from_before_are_named_once(path: Path) -> None:
    keys = from_before(path)
    custodian = KeyringCustodian(path, approving("alice"))
    with pytest.raises(AccessDenied, match="holds no record of the subject"):
        custodian.destroy(US, "kid-alice", WHY)  # not until they are named
    assert user_version(tombstones_path(path)) == 2  # the record is made, empty
    assert custodian.needs_subjects()
    # a key wrapped since keeps the subject it was wrapped for, whatever it is told later
    custodian.wrap(US, "kid-dan", hierarchy.new_key(), WHY, subject="dan")
    custodian.record_subjects(
        [(US, "kid-alice", "alice"), (US, "kid-bob", "bob"), (US, "kid-dan", "alice")]
    )
    assert not custodian.needs_subjects() and not KeyringCustodian(path).needs_subjects()
    for key_id in ("kid-bob", "kid-dan"):
        with pytest.raises(AccessDenied, match=r"\(custodian:key-subject\).*another subject"):
            custodian.destroy(US, key_id, WHY)
    custodian.destroy(US, "kid-alice", WHY)
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid-alice", keys["alice"][1], WHY)
    # named once: a key left out then is never named afterwards
    custodian.record_subjects([(US, "kid-carol", "alice")])
    with pytest.raises(AccessDenied, match="holds no record of the subject"):
        custodian.destroy(US, "kid-carol", WHY)
    assert custodian.unwrap(US, "kid-carol", keys["carol"][1], WHY) == keys["carol"][0]


def test_a_lost_record_is_not_made_anew(path: Path) -> None:
    """Made anew, it would be named again from the catalogs, which the operator writes."""
    KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    key_subjects_path(path).unlink()
    custodian = KeyringCustodian(path, approving("alice"))
    assert not custodian.needs_subjects()
    with pytest.raises(KeyUnavailable, match=r"key subjects .* do not exist"):
        custodian.destroy(US, "kid", WHY)
    with pytest.raises(KeyUnavailable, match=r"key subjects .* do not exist"):
        custodian.wrap(US, "kid-2", hierarchy.new_key(), WHY, subject="bob")
    assert not key_subjects_path(path).exists()


def test_a_record_of_a_newer_schema_is_refused(path: Path) -> None:
    KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    user_version(key_subjects_path(path), 3)
    with pytest.raises(NewerFormat, match=r"schema version 3; .*upgrade shardvault"):
        KeyringCustodian(path, approving("alice")).destroy(US, "kid", WHY)


def test_a_record_of_schema_1_gains_the_table_of_destroy_attestations(
    path: Path, tmp_path: Path
) -> None:
    # as a shardvault from before attestations left it: the tags kept, the table added
    from shardvault.governance.attestations import CustodianKey

    KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    record = key_subjects_path(path)
    with sqlite3.connect(record) as db:
        db.execute("DROP TABLE destroy_attestations")
        db.execute("PRAGMA user_version=1")
    (tmp_path / "partner").mkdir()
    key = CustodianKey(tmp_path / "partner", "partner.example/custodian")
    with pytest.raises(AccessDenied, match="custodian:key-subject"):  # the tag is still there
        KeyringCustodian(path, approving("bob"), signer=key).destroy(US, "kid", WHY, nonce=b"n")
    assert user_version(record) == 2
    custodian = KeyringCustodian(path, approving("alice"), signer=key)
    signed = custodian.destroy(US, "kid", WHY, nonce=b"n")
    assert signed is not None and custodian.destroy_attestation(US, "kid") == signed
    with sqlite3.connect(record) as db:
        assert db.execute("SELECT count(*) FROM destroy_attestations").fetchone() == (1,)
