"""Residency, refusals and tenant isolation, checked on disk rather than through the API."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.governance_support import forget_approved

from conftest import SEGMENT, files_under, make_deployment, manifest_of
from shardvault.catalog.port import Catalog
from shardvault.config import Config, load
from shardvault.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    KeyUnavailable,
    NotFound,
    ResidencyRefused,
    TooFewNodes,
)
from shardvault.keys.port import KeyScope
from shardvault.model import LOCAL_ADMIN, ObjectRef, RequestContext
from shardvault.vault import Vault
from shardvault.vault.cells import sqlite_catalogs

SUBJECT = "resident-7f3a9c"
KEY = "diary/entry-4b1d2e.txt"


def test_shards_stay_in_the_home_jurisdiction(vault: Vault, config_path: Path) -> None:
    base = config_path.parent
    vault.register_subject("intl", SUBJECT, "US")
    for number in range(8):
        vault.put(ObjectRef("intl", SUBJECT, f"{KEY}.{number}"), os.urandom(SEGMENT + 1 + number))
    written = files_under(base / "nodes")
    assert len(written) == 8 * 6
    assert all(path.relative_to(base / "nodes").parts[0] == "US" for path in written)
    assert files_under(base / "nodes" / "SG") == set()
    assert files_under(base / "nodes" / "EU") == set()
    for number in range(8):
        ref = ObjectRef("intl", SUBJECT, f"{KEY}.{number}")
        locations = vault.where(ref)
        assert len(locations) == 2 * 6
        assert {loc.jurisdiction for loc in locations} == {"US"}
        assert len({loc.facility for loc in locations}) == 3
        assert {loc.node for loc in locations} == set(manifest_of(vault, ref).nodes)


def _bytes_of(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(files_under(directory)))


def test_metadata_stays_in_the_home_cell(config_path: Path) -> None:
    base = config_path.parent
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", SUBJECT, "US")
        vault.register_subject("intl", "someone-else", "SG")
        vault.put(ObjectRef("intl", SUBJECT, KEY), b"x" * 100)
        vault.put(ObjectRef("intl", "someone-else", "other"), b"y")
        cells = base / "state" / "cells"
        # read while open too: recent writes may still sit in the WAL files
        for _ in range(2):
            assert SUBJECT.encode() in _bytes_of(cells / "US")  # the check can see it
            assert KEY.encode() in _bytes_of(cells / "US")
            for other in ("SG", "EU"):
                raw = _bytes_of(cells / other)
                assert SUBJECT.encode() not in raw
                assert KEY.encode() not in raw
                assert b"entry-4b1d2e" not in raw
            directory = b"".join(path.read_bytes() for path in (base / "state").glob("directory.*"))
            assert SUBJECT.encode() not in directory
            assert SUBJECT[:10].encode() not in directory
            assert KEY.encode() not in directory
            vault.put(ObjectRef("intl", SUBJECT, KEY), b"z")
    with sqlite3.connect(base / "state" / "directory.sqlite") as db:
        rows = db.execute("SELECT token, jurisdiction FROM homes").fetchall()
    assert sorted(j for _, j in rows) == ["SG", "US"]
    assert all(len(token) == 64 and SUBJECT not in token for token, _ in rows)


def _state_snapshot(base: Path) -> set[Path]:
    return files_under(base / "nodes")


@pytest.fixture
def refusing_vault(tmp_path: Path) -> Iterator[tuple[Vault, Path]]:
    """CN is declared with no nodes; three of the six US nodes are down or draining."""

    def edit(text: str) -> str:
        text = text.replace(
            "[jurisdictions.EU]\n", '[jurisdictions.CN]\nname = "China"\n\n[jurisdictions.EU]\n'
        )
        text = text.replace('id = "us-n1"\n', 'id = "us-n1"\nstate = "down"\n')
        text = text.replace('id = "us-n2"\n', 'id = "us-n2"\nstate = "draining"\n')
        text = text.replace('id = "us-n3"\n', 'id = "us-n3"\nstate = "down"\n')
        return text.replace(
            '[tenants.domestic]\nname = "Domestic social app"\n',
            '[tenants.domestic]\nname = "Domestic social app"\njurisdictions = ["SG"]\n',
        )

    path = make_deployment(tmp_path / "deploy", edit=edit)
    with Vault.open(load(path)) as vault:
        yield vault, path.parent


def test_no_nodes_in_the_home_jurisdiction_refuses_the_write(
    refusing_vault: tuple[Vault, Path],
) -> None:
    vault, base = refusing_vault
    vault.register_subject("intl", "li", "CN")
    with pytest.raises(ResidencyRefused, match="no storage nodes in jurisdiction CN"):
        vault.put(ObjectRef("intl", "li", "k"), b"data")
    assert _state_snapshot(base) == set()
    assert vault.cells["CN"].catalog.claim_collectable(float("inf")) == []
    assert vault.cells["CN"].catalog.known_object_ids() == set()


def test_too_few_active_nodes_refuses_the_write(refusing_vault: tuple[Vault, Path]) -> None:
    vault, base = refusing_vault
    vault.register_subject("intl", "amy", "US")
    with pytest.raises(TooFewNodes, match="US has 3 active nodes of 6, a stripe needs 6"):
        vault.put(ObjectRef("intl", "amy", "k"), os.urandom(3 * SEGMENT))
    assert _state_snapshot(base) == set()
    assert vault.cells["US"].catalog.known_object_ids() == set()
    # the other cells are not used as a fallback
    vault.register_subject("intl", "sg-user", "SG")
    vault.put(ObjectRef("intl", "sg-user", "k"), b"fine")
    assert {p.relative_to(base / "nodes").parts[0] for p in _state_snapshot(base)} == {"SG"}


def test_unknown_tenant_or_jurisdiction_or_disallowed_home_is_refused(
    refusing_vault: tuple[Vault, Path],
) -> None:
    vault, base = refusing_vault
    with pytest.raises(InvalidInput, match="unknown tenant 'nope'"):
        vault.register_subject("nope", "amy", "US")
    with pytest.raises(InvalidInput, match="unknown jurisdiction 'JP'"):
        vault.register_subject("intl", "amy", "JP")
    with pytest.raises(InvalidInput, match="invalid jurisdiction"):
        vault.register_subject("intl", "amy", "us")
    with pytest.raises(InvalidInput, match="tenant domestic does not keep users in US"):
        vault.register_subject("domestic", "amy", "US")
    with pytest.raises(InvalidInput, match="unknown tenant"):
        vault.put(ObjectRef("nope", "amy", "k"), b"x")
    for cell in vault.cells.values():
        assert cell.catalog.get_subject("intl", "amy") is None
        assert cell.catalog.get_subject("domestic", "amy") is None
    assert _state_snapshot(base) == set()


def test_tenants_are_isolated(vault: Vault) -> None:
    mine, theirs = ObjectRef("intl", "sam", "notes"), ObjectRef("domestic", "sam", "notes")
    intl = vault.register_subject("intl", "sam", "US")
    domestic = vault.register_subject("domestic", "sam", "US")
    assert intl.key_id != domestic.key_id
    assert intl.wrapped_key != domestic.wrapped_key
    vault.put(mine, b"intl's secret")
    vault.put(theirs, b"domestic's secret")
    assert vault.get(mine) == b"intl's secret"
    assert vault.get(theirs) == b"domestic's secret"
    assert manifest_of(vault, mine).object_id != manifest_of(vault, theirs).object_id
    assert [i.ref.tenant for i in vault.list("intl", "sam").items] == ["intl"]

    # a subject key wrapped for one tenant's scope does not unwrap in the other's
    why = RequestContext(LOCAL_ADMIN, "read", "req-1", "US").justification()
    assert domestic.wrapped_key is not None
    with pytest.raises(KeyUnavailable):
        vault.custodian.unwrap(KeyScope("intl", "US"), domestic.key_id, domestic.wrapped_key, why)
    with pytest.raises(KeyUnavailable):
        vault.custodian.unwrap(KeyScope("intl", "US"), intl.key_id, domestic.wrapped_key, why)

    # an operator copying the other tenant's manifest into our row reads nothing of theirs
    catalog = vault.cells["US"].catalog
    stolen = catalog.get_version(theirs)
    assert stolen is not None
    db = catalog._db  # type: ignore[attr-defined]
    db.execute(
        "UPDATE versions SET manifest = ? WHERE tenant = 'intl' AND subject = 'sam'",
        (stolen.manifest,),
    )
    with pytest.raises(IntegrityError, match="holds a manifest written for another version"):
        vault.get(mine)
    # nor with its object id copied too: the data key is bound to the tenant
    db.execute(
        "UPDATE versions SET object_id = ? WHERE tenant = 'intl' AND subject = 'sam'",
        (stolen.object_id,),
    )
    with pytest.raises(IntegrityError, match="failed to unwrap"):
        vault.get(mine)


def test_a_registration_undone_elsewhere_and_redone_in_another_cell_is_seen_at_once(
    deployment: tuple[Config, Vault],
) -> None:
    """A home is remembered only once its cell holds the subject: one with nothing behind
    it is asked of the directory again, so nothing stale sends data elsewhere."""
    config, vault = deployment
    other = Vault.open(config)  # stands in for another process: its own directory handle
    try:
        other.directory.add("intl", "bob", "US")  # a registration in progress elsewhere
        ref = ObjectRef("intl", "bob", "note.txt")
        with pytest.raises(NotFound):
            vault.subject("intl", "bob")  # the directory says US, the US cell has no bob
        with pytest.raises(NotFound):
            vault.get(ref)  # decided in US, where the cell has no bob: not settled
        with pytest.raises(NotFound):
            vault.put(ref, b"lost?")
        other.directory.remove("intl", "bob")  # ... which failed and was undone
        other.register_subject("intl", "bob", "SG")
        assert vault.subject("intl", "bob").jurisdiction == "SG"
        assert vault.put(ref, b"hi").version == 1 and vault.get(ref) == b"hi"
        assert vault.cells["US"].catalog.list_versions(ref) == []
    finally:
        other.close()


def test_a_settled_home_is_answered_without_asking_the_directory(vault: Vault) -> None:
    # every read asked the directory's database once: a query contended by every thread
    vault.register_subject("intl", "bob", "SG")
    ref = ObjectRef("intl", "bob", "note.txt")
    vault.put(ref, b"hi")  # its cell was seen holding bob: settled
    asked: list[str] = []
    vault.directory._db.set_trace_callback(asked.append)  # type: ignore[attr-defined]
    assert vault.get(ref) == b"hi" and vault.stat(ref).size == 2
    assert vault.list("intl", "bob").items[0].ref == ref
    assert asked == []
    assert vault.directory.home("intl", "nobody") is None  # anyone else is still asked
    assert len(asked) == 1


def test_a_registration_interrupted_after_its_cell_committed_keeps_its_home(
    deployment: tuple[Config, Vault], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the undo removed the directory's row although the cell held the subject: a process
    # that had settled the home would keep sending bob's data to US after bob was
    # registered again in SG
    config, vault = deployment
    catalog = vault.cells["US"].catalog
    committed = catalog.add_subject

    def then_interrupted(record: object) -> None:
        committed(record)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(catalog, "add_subject", then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        vault.register_subject("intl", "bob", "US")
    monkeypatch.undo()
    assert vault.directory.home("intl", "bob") == "US"
    with pytest.raises(Conflict, match="already registered"):
        vault.register_subject("intl", "bob", "SG")
    ref = ObjectRef("intl", "bob", "note.txt")
    vault.put(ref, b"hi")
    with Vault.open(config) as other:
        assert other.get(ref) == b"hi"


def test_a_registration_failing_before_its_cell_committed_leaves_no_home(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(record: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(vault.cells["US"].catalog, "add_subject", fails)
    with pytest.raises(KeyboardInterrupt):
        vault.register_subject("intl", "bob", "US")
    monkeypatch.undo()
    assert vault.directory.home("intl", "bob") is None
    assert vault.register_subject("intl", "bob", "SG").jurisdiction == "SG"


def test_a_subject_record_naming_another_home_is_refused(
    deployment: tuple[Config, Vault],
) -> None:
    """The directory sends bob to US, whose catalog holds a record saying SG (tampering
    or a restore gone wrong): the access was decided in US and its data would go to SG,
    so it is refused rather than guessed."""
    _, vault = deployment
    record = vault.register_subject("intl", "bob", "SG")
    vault.directory.remove("intl", "bob")
    vault.directory.add("intl", "bob", "US")
    vault.cells["US"].catalog.add_subject(record)
    ref = ObjectRef("intl", "bob", "note.txt")
    with pytest.raises(IntegrityError, match="recorded in US's catalog as living in SG"):
        vault.put(ref, b"hi")
    with pytest.raises(IntegrityError, match="living in SG"):
        vault.get(ref)
    with pytest.raises(IntegrityError, match="living in SG"):
        vault.list("intl", "bob")
    with pytest.raises(IntegrityError, match="living in SG"):
        forget_approved(vault, "intl", "bob")
    for cell in ("US", "SG"):  # refused before anything was reserved, let alone written
        assert vault.cells[cell].catalog.claim_collectable(float("inf")) == []
        assert vault.cells[cell].catalog.list_versions(ref) == []
        found = vault.cells[cell].catalog.get_subject("intl", "bob")
        assert found is not None and found.forgotten_at is None  # nothing forgotten


def test_a_lost_directory_is_refused_not_taken_for_a_new_one(config_path: Path) -> None:
    # a blank directory would say every subject is unregistered, and let each be
    # registered again in another jurisdiction (found in review)
    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", SUBJECT, "US")
    state = config_path.parent / "state"
    for path in state.glob("directory.sqlite*"):
        path.unlink()
    with pytest.raises(IntegrityError, match=r"holds no home, though cell US holds subjects"):
        Vault.open(load(config_path))


def test_a_first_registration_meanwhile_is_not_taken_for_a_lost_directory(
    config_path: Path,
) -> None:
    """A process opening the vault found the directory empty, then, opening each cell,
    one holding the subject another process had registered in between (the home first,
    then the cell's row), and refused to open: "restore it from a backup"."""
    factory = sqlite_catalogs(load(config_path).state_dir)
    registered: list[str] = []

    def catalogs(code: str) -> Catalog:
        if not registered:  # the other process registers its first subject, here
            registered.append(code)
            with Vault.open(load(config_path)) as other:
                other.register_subject("intl", SUBJECT, code)
        return factory(code)

    with Vault.open(load(config_path), catalogs=catalogs) as vault:
        assert registered and vault.subject("intl", SUBJECT).jurisdiction == registered[0]


def _temporary_files_opened(db: sqlite3.Connection) -> set[str]:
    """The SQLite temporary files the process has open while ``db`` runs a statement
    (``etilqs_*``, unlinked as soon as made: only an open descriptor shows them)."""
    seen: set[str] = set()

    def look() -> int:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if os.path.basename(target).startswith("etilqs_"):
                seen.add(target)
        return 0

    db.set_progress_handler(look, 200)
    return seen


def test_a_forget_keeps_the_catalogs_pages_out_of_the_system_temp_directory(
    vault: Vault,
) -> None:
    # SQLite spilled the journal of a forget's mark (one statement over every version
    # of the subject: its id, object keys and manifests) to a file in /var/tmp, outside
    # the cell's directory; unlinked at once, its blocks stayed on that disk
    vault.register_subject("intl", SUBJECT, "US")
    refs = [ObjectRef("intl", SUBJECT, f"{KEY}.{i:04d}.{'k' * 200}") for i in range(300)]
    for ref in refs:
        vault.put(ref, b"x")
    spilled = _temporary_files_opened(vault.cells["US"].catalog._db)  # type: ignore[attr-defined]
    result = forget_approved(vault, "intl", SUBJECT)
    assert (result.versions_deleted, spilled) == (300, set())
