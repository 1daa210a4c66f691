"""The files the keyring makes beside itself, as the config sees them (`keyring_files`)."""

from __future__ import annotations

from pathlib import Path

from shardvault import durability
from shardvault.keys.key_subjects import key_subjects_path
from shardvault.keys.keyring import keyring_files, lock_path
from shardvault.keys.tombstones import tombstones_path


def test_each_file_beside_the_keyring_is_named_at_its_longest(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.json"
    lock, temporary, *journals = keyring_files(keyring)
    assert lock == lock_path(keyring)
    # the temporary is one durability's writes leave and know by their tag, at its widest
    temporary.touch()
    assert durability.leftover_temporaries(keyring) == [temporary]
    assert [j.name for j in journals] == [
        tombstones_path(keyring).name + "-journal",
        key_subjects_path(keyring).name + "-journal",
    ]
