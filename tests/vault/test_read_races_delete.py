"""A read that races a delete and a gc: the version is not found, never called damaged.

gc collects a deleted version whatever its age, so a get that looked the version up
just before an `rm` can find its shards gone by the time it reads them. That is no
damage: the read says the version was deleted, records nothing for repair, and
never returns another version's bytes instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SEGMENT, make_deployment, shard_paths
from shardvault.cli.app import main
from shardvault.config import load
from shardvault.errors import NotFound
from shardvault.model import ObjectRef
from shardvault.vault import Vault, core
from shardvault.vault.reader import READ_AHEAD, ObjectReader

REF = ObjectRef("intl", "alice", "notes.txt")
DELETED = r"notes\.txt v1 was deleted or forgotten while it was being read"
SIZES = {"small": 1024, "three segments": 3 * SEGMENT}
PACK_LIMITS = {"files": 0, "packed": 64 << 10}


def stored(tmp_path: Path, pack_limit: int, data: bytes) -> Path:
    """A demo deployment holding DATA as alice's REF, version 1; its config."""
    config = make_deployment(tmp_path / "deploy", pack_limit=pack_limit)
    with Vault.open(load(config)) as vault:
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, data)
    return config


def before_the_reads(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[Vault], None]) -> None:
    """Run MEANWHILE once a read has looked its version up, before it reads a shard."""
    real = core.open_reader

    def late(vault: Vault, *args: Any) -> ObjectReader:
        meanwhile(vault)
        return real(vault, *args)

    monkeypatch.setattr(core, "open_reader", late)


def deleted_and_collected(vault: Vault) -> None:
    vault.delete(REF)
    assert vault.gc().versions == 1  # a deleted version goes whatever its age


def no_damage_to_repair(vault: Vault) -> None:
    assert vault.cells["US"].catalog.damage() == []
    report = vault.repair()
    assert (report.versions, report.rebuilt, report.problems) == (0, 0, ())


@pytest.mark.parametrize("pack_limit", PACK_LIMITS.values(), ids=PACK_LIMITS.keys())
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_version_collected_between_its_lookup_and_its_reads_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, pack_limit: int
) -> None:
    # it was "only 0 of the 4 shards needed are intact ... restore it from a backup"
    config = stored(tmp_path, pack_limit, os.urandom(size))
    with Vault.open(load(config)) as vault:
        before_the_reads(monkeypatch, deleted_and_collected)
        reader = vault.open_read(REF)
        with reader, pytest.raises(NotFound, match=DELETED):
            reader.read_all()
        assert reader.damage == []  # gone is no damage
        monkeypatch.undo()
        with pytest.raises(NotFound, match="no object"):
            vault.get(REF)
        no_damage_to_repair(vault)


def test_a_streaming_read_whose_version_is_collected_part_way_is_not_found(
    tmp_path: Path,
) -> None:
    # packed: the delete zeroes the shards in their packs, under the reader's open handles;
    # the segments fetched ahead before it may still be read whole, the next cannot
    config = stored(tmp_path, 1 << 20, os.urandom((READ_AHEAD + 3) * SEGMENT))  # packed
    with Vault.open(load(config)) as vault, vault.open_read(REF) as reader:
        segments = iter(reader)
        next(segments)
        deleted_and_collected(vault)
        with pytest.raises(NotFound, match=DELETED + r" \(segment \d+\)"):
            b"".join(segments)
        assert reader.damage == []
        vault.report_damage(reader.damage)
        no_damage_to_repair(vault)


def test_the_latest_version_deleted_under_a_get_while_a_newer_is_put_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the get resolved version 1: it neither reads version 2 instead nor calls 1 damaged
    config = stored(tmp_path, 0, os.urandom(SEGMENT))

    def replaced(vault: Vault) -> None:
        assert vault.put(REF, b"the newer version").version == 2
        vault.delete(REF, 1)
        assert vault.gc().versions == 1

    with Vault.open(load(config)) as vault:
        before_the_reads(monkeypatch, replaced)
        with pytest.raises(NotFound, match=DELETED + ".*get the key again"):
            vault.get(REF)
        monkeypatch.undo()
        assert vault.get(REF) == b"the newer version"
        no_damage_to_repair(vault)


def test_the_cli_get_of_a_version_deleted_under_it_exits_1_writing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    config = stored(tmp_path, PACK_LIMITS["packed"], os.urandom(3 * SEGMENT))
    before_the_reads(monkeypatch, deleted_and_collected)
    target = tmp_path / "out.bin"
    argv = ["--config", str(config), "get", "intl", "alice", REF.key, "-o", str(target)]
    assert main(argv) == 1
    err = capsysbinary.readouterr().err.decode()
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "was deleted or forgotten while it was being read" in err
    assert not target.exists() and list(tmp_path.iterdir()) == [tmp_path / "deploy"]


def test_a_read_around_shards_a_delete_and_gc_took_records_no_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc that took only some of a deleted version's shards before the read got to
    them (cut short, or still sweeping) leaves a read that succeeds around them: what it
    read around is gone with the version, not damage for repair or a warning."""
    data = os.urandom(1024)
    config = stored(tmp_path, PACK_LIMITS["files"], data)
    with Vault.open(load(config)) as vault:
        paths = shard_paths(vault, REF)

        def partly_collected(vault: Vault) -> None:
            vault.delete(REF)
            for path in paths[:2]:  # m of them: the read still has k
                path.unlink()

        before_the_reads(monkeypatch, partly_collected)
        reader = vault.open_read(REF)
        with reader:
            assert reader.read_all() == data  # the version it resolved, read around
        assert len(reader.damage) == 2
        assert vault.report_damage(reader.damage) == []  # nothing queued, nothing to warn of
        no_damage_to_repair(vault)
