"""One contract for every key custodian: memory and keyring run the same tests."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardvault import durability
from shardvault.errors import (
    AccessDenied,
    ConfigError,
    IntegrityError,
    KeyUnavailable,
    NewerFormat,
    SubjectForgotten,
)
from shardvault.governance.attestations import CustodianKey, open_attestation
from shardvault.keys import hierarchy
from shardvault.keys.attestation import (
    DestroyStatement,
    StatementSigner,
    subject_commitment,
    utc_seconds,
)
from shardvault.keys.key_subjects import key_subjects_path
from shardvault.keys.keyring import KeyringCustodian
from shardvault.keys.memory import MemoryCustodian
from shardvault.keys.port import KeyCustodian, KeyOperation, KeyScope
from shardvault.keys.rootkey import CustodianGate
from shardvault.keys.tombstones import tombstones_path
from shardvault.model import Justification

US = KeyScope("intl", "US")
WHY = Justification("svc-feed", "serve-feed", "req-1", "US")

Factory = Callable[..., KeyCustodian]


@pytest.fixture(params=["memory", "keyring"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Builds the adapter; for the keyring, every call opens the same file anew."""
    if request.param == "memory":
        shared: list[MemoryCustodian] = []

        def memory(
            gate: CustodianGate | None = None,
            signer: StatementSigner | None = None,
            clock: Callable[[], float] = time.time,
        ) -> KeyCustodian:
            if not shared:
                shared.append(MemoryCustodian())
            shared[0].gate, shared[0].signer, shared[0].clock = gate, signer, clock
            return shared[0]

        return memory

    def keyring(
        gate: CustodianGate | None = None,
        signer: StatementSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> KeyCustodian:
        path = tmp_path / "keys" / "keyring.json"
        return KeyringCustodian(path, gate, signer=signer, clock=clock)

    return keyring


def test_wrap_unwrap_round_trip(make: Factory) -> None:
    custodian = make()
    key = hierarchy.new_key()
    blob = custodian.wrap(US, "kid-1", key, WHY, subject="alice")
    assert key not in blob
    assert custodian.unwrap(US, "kid-1", blob, WHY) == key
    assert make().unwrap(US, "kid-1", blob, WHY) == key  # and after reopening


def test_each_wrap_is_fresh(make: Factory) -> None:
    custodian = make()
    key = hierarchy.new_key()
    first = custodian.wrap(US, "kid", key, WHY, subject="alice")
    assert custodian.wrap(US, "kid", key, WHY, subject="alice") != first


@pytest.mark.parametrize(
    ("scope", "key_id"),
    [
        (KeyScope("domestic", "US"), "kid-1"),
        (KeyScope("intl", "SG"), "kid-1"),
        (US, "kid-2"),
    ],
    ids=["other-tenant", "other-jurisdiction", "other-key-id"],
)
def test_blob_is_bound_to_scope_and_key_id(make: Factory, scope: KeyScope, key_id: str) -> None:
    custodian = make()
    # the other root exists too
    custodian.wrap(scope, "warm-up", hierarchy.new_key(), WHY, subject="alice")
    blob = custodian.wrap(US, "kid-1", hierarchy.new_key(), WHY, subject="alice")
    with pytest.raises(KeyUnavailable, match="could not unwrap"):
        custodian.unwrap(scope, key_id, blob, WHY)


def test_tampered_or_unknown_version_blob_is_refused(make: Factory) -> None:
    custodian = make()
    blob = bytearray(custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice"))
    blob[-1] ^= 1
    with pytest.raises(KeyUnavailable):
        custodian.unwrap(US, "kid", bytes(blob), WHY)
    blob[-1] ^= 1
    blob[0] = 2
    with pytest.raises(KeyUnavailable, match="format version 2 is not supported"):
        custodian.unwrap(US, "kid", bytes(blob), WHY)
    with pytest.raises(KeyUnavailable):
        custodian.unwrap(US, "kid", b"", WHY)


def test_destroy_is_forever(make: Factory) -> None:
    custodian = make()
    key = hierarchy.new_key()
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    other = custodian.wrap(US, "kid-other", key, WHY, subject="alice")
    custodian.destroy(US, "kid", WHY)
    for _ in range(2):
        with pytest.raises(SubjectForgotten, match="kid of intl/US was destroyed"):
            custodian.unwrap(US, "kid", blob, WHY)
    with pytest.raises(SubjectForgotten):
        make().unwrap(US, "kid", blob, WHY)
    # only that key: the same key id elsewhere and other keys still work
    assert custodian.unwrap(US, "kid-other", other, WHY) == key
    elsewhere = custodian.wrap(KeyScope("intl", "SG"), "kid", key, WHY, subject="alice")
    assert custodian.unwrap(KeyScope("intl", "SG"), "kid", elsewhere, WHY) == key


def test_every_unwrap_shows_the_justification_to_the_gate(make: Factory) -> None:
    seen: list[tuple[KeyOperation, KeyScope, str, Justification]] = []

    def gate(
        operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        seen.append((operation, scope, key_id, why))
        if why.requester_jurisdiction == "CN":
            raise AccessDenied("custodian refuses foreign requests")
        return "alice" if operation is KeyOperation.DESTROY else None  # its approval's

    custodian = make(gate)
    key = hierarchy.new_key()
    blob = custodian.wrap(US, "kid", key, WHY, subject="alice")
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    foreign = Justification("agency", "law-enforcement", "req-2", "CN")
    with pytest.raises(AccessDenied):
        custodian.unwrap(US, "kid", blob, foreign)
    custodian.destroy(US, "kid", WHY)
    assert seen == [
        (KeyOperation.WRAP, US, "kid", WHY),
        (KeyOperation.UNWRAP, US, "kid", WHY),
        (KeyOperation.UNWRAP, US, "kid", foreign),
        (KeyOperation.DESTROY, US, "kid", WHY),
    ]


def approving(subject: str | None) -> CustodianGate:
    """A gate that allows everything; the approval a wrap, unwrap or destroy names, if it
    names one, is for ``subject``."""

    def gate(
        operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        return subject

    return gate


@pytest.mark.parametrize("named", ["bob", None], ids=["another-subject", "no-subject"])
def test_a_destroy_is_done_only_for_the_subject_the_key_was_wrapped_for(
    make: Factory, tmp_path: Path, named: str | None
) -> None:
    key = hierarchy.new_key()
    blob = make().wrap(US, "kid", key, WHY, subject="alice")
    before = keyring_files(tmp_path)
    with pytest.raises(AccessDenied, match=r"refused the destroy \(custodian:key-subject\)") as no:
        make(approving(named)).destroy(US, "kid", WHY)
    assert no.value.rule == "custodian:key-subject"
    assert keyring_files(tmp_path) == before
    assert make().unwrap(US, "kid", blob, WHY) == key
    make(approving("alice")).destroy(US, "kid", WHY)
    with pytest.raises(SubjectForgotten):
        make().unwrap(US, "kid", blob, WHY)
    with pytest.raises(AccessDenied, match="holds no record of the subject"):
        make(approving("alice")).destroy(US, "kid-never-wrapped", WHY)


APPROVED = Justification("us-doj", "lawful-request", "req-2", "US", "apr-us-0123456789abcdef")


@pytest.mark.parametrize("named", ["bob", None], ids=["another-subject", "no-subject"])
def test_an_approved_unwrap_is_done_only_for_the_subject_the_key_was_wrapped_for(
    make: Factory, tmp_path: Path, named: str | None
) -> None:
    # as a destroy: a met approval to read alice's data unwraps alice's key, not bob's
    key = hierarchy.new_key()
    blob = make().wrap(US, "kid", key, WHY, subject="alice")
    before = keyring_files(tmp_path)
    with pytest.raises(AccessDenied, match=r"refused the unwrap \(custodian:key-subject\)") as no:
        make(approving(named)).unwrap(US, "kid", blob, APPROVED)
    assert no.value.rule == "custodian:key-subject"
    assert keyring_files(tmp_path) == before
    assert make(approving("alice")).unwrap(US, "kid", blob, APPROVED) == key
    assert make(approving(named)).unwrap(US, "kid", blob, WHY) == key  # names no approval
    other = make().wrap(US, "kid-bob", key, WHY, subject="bob")
    with pytest.raises(AccessDenied, match="another subject"):
        make(approving("alice")).unwrap(US, "kid-bob", other, APPROVED)


@pytest.mark.parametrize("named", ["bob", None], ids=["another-subject", "no-subject"])
def test_an_approved_wrap_is_done_only_for_the_subject_the_approval_names(
    make: Factory, tmp_path: Path, named: str | None
) -> None:
    # a met approval to register alice wraps a key for alice, not one "for" bob: else it
    # registers anyone without the approvers' review
    key = hierarchy.new_key()
    before = keyring_files(tmp_path)
    with pytest.raises(AccessDenied, match=r"refused the wrap \(custodian:key-subject\)") as no:
        make(approving(named)).wrap(US, "kid", key, APPROVED, subject="alice")
    assert no.value.rule == "custodian:key-subject"
    assert keyring_files(tmp_path) == before
    blob = make(approving("alice")).wrap(US, "kid", key, APPROVED, subject="alice")
    assert make().unwrap(US, "kid", blob, WHY) == key
    make(approving(named)).wrap(US, "kid-2", key, WHY, subject="bob")  # names no approval


def test_a_key_id_keeps_the_subject_it_was_first_wrapped_for(make: Factory) -> None:
    """Else wrapping bob's key id again "for alice" would let alice's forget destroy it."""
    key = hierarchy.new_key()
    blob = make().wrap(US, "kid", key, WHY, subject="bob")
    make().wrap(US, "kid", key, WHY, subject="bob")  # the same subject's again: fine
    with pytest.raises(AccessDenied, match=r"refused the wrap \(custodian:key-subject\)"):
        make().wrap(US, "kid", key, WHY, subject="alice")
    with pytest.raises(AccessDenied, match="custodian:key-subject"):
        make(approving("alice")).destroy(US, "kid", WHY)
    assert make().unwrap(US, "kid", blob, WHY) == key


NONCE = bytes(range(32))
DESTROYED_AT = 1_800_000_000.0


def partner_key(tmp_path: Path) -> CustodianKey:
    """The custodian's real signing key, in a partner directory of its own."""
    (tmp_path / "partner").mkdir(exist_ok=True)
    return CustodianKey(tmp_path / "partner", "partner.example/custodian")


def test_a_destroy_is_attested_for_the_subject_the_custodian_checked(
    make: Factory, tmp_path: Path
) -> None:
    # the vault names only the nonce: the commitment is to the subject the custodian
    # recorded at the wrap and the approval names, whatever the caller would like
    key = partner_key(tmp_path)
    make().wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    assert make().destroy_attestation(US, "kid") is None  # not destroyed: nothing to attest
    custodian = make(approving("alice"), key, lambda: DESTROYED_AT)
    signed = custodian.destroy(US, "kid", WHY, nonce=NONCE)
    assert signed is not None
    assert open_attestation(signed, key.verifier) == DestroyStatement(
        "intl", "US", "kid", utc_seconds(DESTROYED_AT), subject_commitment("intl", "alice", NONCE)
    )
    assert subject_commitment("intl", "alice", NONCE) != subject_commitment("intl", "bob", NONCE)
    assert signed.startswith(b"shardvault-destroy/v1\n")
    assert make().destroy_attestation(US, "kid") == signed  # after reopening too


def test_a_destroy_run_again_is_given_the_first_attestation(make: Factory, tmp_path: Path) -> None:
    """A forget cut short after its destroy runs it again: it gets the statement signed
    when the key was destroyed, with that time, not a new one."""
    key = partner_key(tmp_path)
    make().wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    first = make(approving("alice"), key, lambda: DESTROYED_AT).destroy(US, "kid", WHY, nonce=NONCE)
    later = make(approving("alice"), key, lambda: DESTROYED_AT + 3600)
    assert later.destroy(US, "kid", WHY, nonce=NONCE) == first
    assert later.destroy_attestation(US, "kid") == first
    # still only for the subject the key was wrapped for
    with pytest.raises(AccessDenied, match="custodian:key-subject"):
        make(approving("bob"), key).destroy(US, "kid", WHY, nonce=NONCE)


def test_a_refused_destroy_attests_nothing(make: Factory, tmp_path: Path) -> None:
    key = partner_key(tmp_path)
    blob = make().wrap(US, "kid", k := hierarchy.new_key(), WHY, subject="alice")
    for gate in (approving("bob"), refusing(KeyOperation.DESTROY)):
        with pytest.raises(AccessDenied):
            make(gate, key).destroy(US, "kid", WHY, nonce=NONCE)
    assert make().destroy_attestation(US, "kid") is None
    assert make().unwrap(US, "kid", blob, WHY) == k


def test_a_custodian_whose_key_cannot_sign_destroys_nothing(make: Factory, tmp_path: Path) -> None:
    # signed before the tombstone: a destroy it could not attest is not done at all
    key = partner_key(tmp_path)
    (tmp_path / "partner" / "custodian.skey").write_text("PRIVATE+KEY+damaged")
    (tmp_path / "partner" / "custodian.skey").chmod(0o600)
    blob = make().wrap(US, "kid", k := hierarchy.new_key(), WHY, subject="alice")
    before = keyring_files(tmp_path)
    with pytest.raises(IntegrityError, match=r"custodian\.skey is damaged"):
        make(approving("alice"), key).destroy(US, "kid", WHY, nonce=NONCE)
    assert keyring_files(tmp_path) == before
    assert make().unwrap(US, "kid", blob, WHY) == k


def test_the_custodians_key_is_made_private_on_first_use(tmp_path: Path) -> None:
    key = partner_key(tmp_path)
    vkey = key.vkey()
    path = tmp_path / "partner" / "custodian.skey"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("PRIVATE+KEY+partner.example/custodian+")
    assert CustodianKey(tmp_path / "partner", "partner.example/custodian").vkey() == vkey
    path.chmod(0o644)  # refused as the witness key is
    with pytest.raises(IntegrityError, match=r"readable by others .*run chmod 600"):
        CustodianKey(tmp_path / "partner", "partner.example/custodian").vkey()


def refusing(*refused: KeyOperation) -> CustodianGate:
    """A gate that refuses the operations named, as the partner's policy would."""

    def gate(operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification) -> None:
        if operation in refused:
            raise AccessDenied(f"no {operation} for you", rule="custodian:default-deny")

    return gate


def keyring_files(tmp_path: Path) -> tuple[bytes | None, bytes | None]:
    """The keyring's bytes and its tombstones' (None where missing): a refusal changes neither."""
    path = tmp_path / "keys" / "keyring.json"

    def read(file: Path) -> bytes | None:
        return file.read_bytes() if file.exists() else None

    return read(path), read(tombstones_path(path))


def test_a_refused_wrap_creates_nothing(make: Factory, tmp_path: Path) -> None:
    custodian = make(refusing(KeyOperation.WRAP))
    with pytest.raises(AccessDenied, match="no wrap") as refused:
        custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    assert refused.value.rule == "custodian:default-deny"
    assert keyring_files(tmp_path) == (None, None)  # not even the scope's root key
    # once the gate allows it, the same call works: the refusal left nothing half-made
    blob = make().wrap(US, "kid", key := hierarchy.new_key(), WHY, subject="alice")
    assert make().unwrap(US, "kid", blob, WHY) == key


def test_a_refused_destroy_leaves_the_key_usable(make: Factory, tmp_path: Path) -> None:
    key = hierarchy.new_key()
    blob = make().wrap(US, "kid", key, WHY, subject="alice")
    before = keyring_files(tmp_path)
    custodian = make(refusing(KeyOperation.DESTROY))
    with pytest.raises(AccessDenied, match="no destroy"):
        custodian.destroy(US, "kid", WHY)
    assert keyring_files(tmp_path) == before
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    assert make().unwrap(US, "kid", blob, WHY) == key  # and after reopening


def test_a_refused_unwrap_changes_nothing(make: Factory, tmp_path: Path) -> None:
    key = hierarchy.new_key()
    blob = make().wrap(US, "kid", key, WHY, subject="alice")
    before = keyring_files(tmp_path)
    with pytest.raises(AccessDenied, match="no unwrap"):
        make(refusing(KeyOperation.UNWRAP)).unwrap(US, "kid", blob, WHY)
    assert keyring_files(tmp_path) == before
    assert make().unwrap(US, "kid", blob, WHY) == key


def test_memory_custodian_records_every_call_with_its_justification() -> None:
    custodian = MemoryCustodian()
    blob = custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    custodian.unwrap(US, "kid", blob, WHY)
    custodian.destroy(US, "kid", WHY)
    with pytest.raises(SubjectForgotten):
        custodian.unwrap(US, "kid", blob, WHY)
    assert [(op, scope, kid) for op, scope, kid, _ in custodian.justifications] == [
        ("wrap", US, "kid"),
        ("unwrap", US, "kid"),
        ("destroy", US, "kid"),
        ("unwrap", US, "kid"),
    ]
    assert all(why == WHY for *_, why in custodian.justifications)


# keyring only -----------------------------------------------------------------


def keyring_at(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    return path


def test_keyring_file_is_private(tmp_path: Path) -> None:
    path = keyring_at(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == ("shardvault-keyring", 2)
    assert list(doc) == ["format", "version", "roots"]  # the tombstones live beside it
    assert list(doc["roots"]) == ["intl/US"]
    assert stat.S_IMODE(tombstones_path(path).stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_keyring_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = keyring_at(tmp_path)
    os.chmod(path, mode)
    with pytest.raises(KeyUnavailable, match=r"readable by others.*chmod 600"):
        KeyringCustodian(path)


def test_keyring_that_is_a_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.mkdir()
    with pytest.raises(ConfigError, match=r"keyring .* is not a file: check custodian.path"):
        KeyringCustodian(path)


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "shardvault-keyring", "version": 2},
        {"format": "shardvault-keyring", "version": 2, "roots": ["intl/US"]},
        {"format": "shardvault-keyring", "version": 2, "roots": {"intl/US": "not base64!"}},
        {"format": "shardvault-keyring", "version": 2, "roots": {"intl/US": "AA=="}},
        {"format": "shardvault-keyring", "version": 1, "roots": {}},
        {"format": "shardvault-keyring", "version": 1, "roots": {}, "destroyed": ["kid"]},
    ],
)
def test_a_damaged_keyring_is_a_one_line_integrity_error(tmp_path: Path, doc: object) -> None:
    # a missing or malformed field was a bare KeyError or TypeError out of the loader;
    # then a ConfigError (exit 2, as for a mistake in the command), though it is damage
    path = keyring_at(tmp_path)
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"keyring .* is damaged: .*from a backup") as refused:
        KeyringCustodian(path)
    assert "\n" not in str(refused.value)


def test_a_keyring_that_cannot_be_read_is_unavailable_not_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the suite runs as root, who reads anything: a failing read stands in for EACCES
    path = keyring_at(tmp_path)
    real_read = durability.read_own

    def refused(file: Path, what: str) -> bytes:
        if file == path:
            raise PermissionError(13, "Permission denied")
        return real_read(file, what)

    monkeypatch.setattr(durability, "read_own", refused)
    with pytest.raises(KeyUnavailable, match=r"keyring .* cannot be read: Permission denied$"):
        KeyringCustodian(path)


def test_keyring_of_unknown_version_is_refused(tmp_path: Path) -> None:
    path = keyring_at(tmp_path)
    doc = json.loads(path.read_text())
    doc["version"] = 3
    path.write_text(json.dumps(doc))
    with pytest.raises(NewerFormat, match=r"version 3; this shardvault reads versions 1 and 2: up"):
        KeyringCustodian(path)
    # no version this or a later shardvault writes; true and 2.0 equal 1 and 2 in Python,
    # and were read as those versions
    for damaged in (0, "2", True, 2.0):
        path.write_text(json.dumps({**doc, "version": damaged}))
        with pytest.raises(IntegrityError, match="is damaged: format version"):
            KeyringCustodian(path)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "other", "version": 1}'])
def test_keyring_that_is_not_a_keyring_is_refused(tmp_path: Path, text: str) -> None:
    path = keyring_at(tmp_path)
    path.write_text(text)
    with pytest.raises(IntegrityError, match="is damaged"):
        KeyringCustodian(path)


def test_keyring_survives_reopen_with_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    key = hierarchy.new_key()
    first = KeyringCustodian(path)
    blob = first.wrap(US, "kid", key, WHY, subject="alice")
    kept = first.wrap(US, "kid-2", key, WHY, subject="alice")
    first.destroy(US, "kid", WHY)
    again = KeyringCustodian(path)
    assert again.unwrap(US, "kid-2", kept, WHY) == key
    with pytest.raises(SubjectForgotten):
        again.unwrap(US, "kid", blob, WHY)
    assert not list(tmp_path.glob("*.tmp"))


def test_keyring_shared_by_two_processes_loses_no_root_and_no_tombstone(tmp_path: Path) -> None:
    """A long-running server and a CLI run each hold the keyring open.

    Whatever one of them creates (a root) or destroys (a subject key), the
    other must neither overwrite nor ignore: a lost root makes every key of
    that scope unreadable, a lost tombstone un-forgets a subject.
    """
    path = tmp_path / "keyring.json"
    sg = KeyScope("intl", "SG")
    key = hierarchy.new_key()
    server = KeyringCustodian(path)
    cli = KeyringCustodian(path)
    us_blob = cli.wrap(US, "kid-us", key, WHY, subject="alice")
    sg_blob = server.wrap(sg, "kid-sg", key, WHY, subject="alice")
    assert server.unwrap(US, "kid-us", us_blob, WHY) == key
    assert KeyringCustodian(path).unwrap(US, "kid-us", us_blob, WHY) == key
    assert KeyringCustodian(path).unwrap(sg, "kid-sg", sg_blob, WHY) == key

    cli.destroy(US, "kid-us", WHY)
    with pytest.raises(SubjectForgotten):
        server.unwrap(US, "kid-us", us_blob, WHY)
    server.wrap(KeyScope("domestic", "EU"), "kid-eu", key, WHY, subject="ed")  # saves again
    with pytest.raises(SubjectForgotten):
        KeyringCustodian(path).unwrap(US, "kid-us", us_blob, WHY)
    assert cli.unwrap(sg, "kid-sg", sg_blob, WHY) == key


def test_keyring_changes_are_durable_with_their_directory(
    tmp_path: Path, synced_directories: list[Path]
) -> None:
    # a new root wraps keys the catalog commits: its rename must survive a crash, so
    # the keyring's directory is fsynced after it (and after the creation of the
    # tombstones and of the key subjects)
    synced = synced_directories
    directory = tmp_path / "keys"
    custodian = KeyringCustodian(directory / "keyring.json")
    blob = custodian.wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")  # a new root
    assert synced == [directory] * 3
    # the root exists: the keyring is not rewritten (SQLite commits the key's subject)
    custodian.wrap(US, "kid-2", hierarchy.new_key(), WHY, subject="bob")
    assert synced == [directory] * 3
    # a tombstone is a forget: SQLite commits it with synchronous=EXTRA (the journal's
    # deletion made durable with the directory), and leaves no journal behind
    custodian.destroy(US, "kid", WHY)
    handle = custodian._tombstones._handle()
    assert handle.db.execute("PRAGMA synchronous").fetchone() == (3,)  # EXTRA
    assert handle.db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert sorted(p.name for p in directory.iterdir()) == [
        "keyring.destroyed.sqlite",
        "keyring.json",
        "keyring.json.lock",
        "keyring.subjects.sqlite",
    ]
    with pytest.raises(SubjectForgotten):
        KeyringCustodian(directory / "keyring.json").unwrap(US, "kid", blob, WHY)


def test_only_an_unwrap_that_names_an_approval_reads_the_key_subjects(tmp_path: Path) -> None:
    """A plain unwrap (every get without an approval) is not slowed by the subject check:
    with the key subjects gone it still unwraps, while one naming an approval is refused."""
    path = tmp_path / "keyring.json"
    key = hierarchy.new_key()
    blob = KeyringCustodian(path).wrap(US, "kid", key, WHY, subject="alice")
    key_subjects_path(path).unlink()
    custodian = KeyringCustodian(path, approving("alice"))
    assert custodian.unwrap(US, "kid", blob, WHY) == key
    with pytest.raises(KeyUnavailable, match=r"key subjects .* do not exist"):
        custodian.unwrap(US, "kid", blob, APPROVED)


def test_an_unwrap_makes_no_root_key(tmp_path: Path) -> None:
    """A keyring without the scope's root (an older copy restored) refuses the unwrap and
    writes nothing: a root made then would wrap no key, and could replace the real one."""
    path = tmp_path / "keyring.json"
    KeyringCustodian(path).wrap(
        KeyScope("intl", "SG"), "kid-sg", hierarchy.new_key(), WHY, subject="alice"
    )
    older = path.read_bytes()  # no root for US
    blob = KeyringCustodian(path).wrap(US, "kid", hierarchy.new_key(), WHY, subject="alice")
    path.write_bytes(older)
    with pytest.raises(KeyUnavailable, match="has no root key for intl/US"):
        KeyringCustodian(path).unwrap(US, "kid", blob, WHY)
    assert path.read_bytes() == older


def test_a_root_in_the_file_is_never_replaced_by_another_held(tmp_path: Path) -> None:
    """A process holding a root the file no longer has (the file was replaced under it)
    refuses to save, rather than write its root over the one the keys were wrapped by."""
    path = tmp_path / "keyring.json"
    KeyringCustodian(path).wrap(
        KeyScope("intl", "SG"), "kid-sg", hierarchy.new_key(), WHY, subject="alice"
    )
    older = path.read_bytes()
    key = hierarchy.new_key()
    blob = KeyringCustodian(path).wrap(US, "kid", key, WHY, subject="alice")
    newer = path.read_bytes()
    path.write_bytes(older)  # the wrong backup restored, and a server wraps under it
    server = KeyringCustodian(path)
    server.wrap(US, "kid-2", hierarchy.new_key(), WHY, subject="alice")
    path.write_bytes(newer)  # the right one restored
    with pytest.raises(IntegrityError, match="another root key for intl/US"):
        server.wrap(KeyScope("intl", "EU"), "kid-eu", hierarchy.new_key(), WHY, subject="alice")
    assert path.read_bytes() == newer
    assert KeyringCustodian(path).unwrap(US, "kid", blob, WHY) == key
