"""Fail closed: an access whose audit entry cannot be made durable does not happen."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.governance.helpers import SERVICE, as_, entries, entries_of, register
from tests.governance_support import forget_approved

from conftest import files_under, make_deployment
from shardvault.audit import AuditLog
from shardvault.config import load
from shardvault.errors import AuditUnavailable
from shardvault.model import ObjectRef
from shardvault.vault import Vault


@pytest.fixture
def small_log(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A deployment whose US audit log lives on a 256 KiB tmpfs; yields (config, filler)."""
    path = make_deployment(tmp_path / "deploy")
    log_dir = path.parent / "state" / "cells" / "US" / "audit" / "log"
    log_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(log_dir)], check=True)
    try:
        yield path, log_dir / "filler"
    finally:
        if subprocess.run(["umount", str(log_dir)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(log_dir)], check=True)


class CountingCustodian:
    """The real custodian, counting unwraps: a refused access must never reach it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.unwraps = 0

    def unwrap(self, *args: object) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(*args)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def fill(path: Path) -> None:
    """Take every free byte of the file system ``path`` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_an_unwritable_log_refuses_the_access_and_loses_nothing(
    small_log: tuple[Path, Path],
) -> None:
    config, filler = small_log
    ref = ObjectRef("intl", "alice", "k")
    with Vault.open(load(config)) as vault:
        register(vault, SERVICE)
        vault.register_subject("intl", "alice", "US")
        vault.put(ref, b"version 1", ctx=as_(SERVICE, "serve-user"))
        nodes = files_under(config.parent / "nodes")
        fill(filler)
        # the log's last page still has room for a few entries: use it up with the
        # smallest entries there are (a list names no object key)
        for _ in range(64):
            try:
                vault.list("intl", "alice", ctx=as_(SERVICE, "serve-user"))
            except AuditUnavailable:
                break
        else:
            pytest.fail("the audit log never filled up")
        logged = [e.to_bytes() for e in entries(vault)]
        custodian = CountingCustodian(vault.custodian)
        vault.custodian = custodian  # type: ignore[assignment]

        for attempt in (
            lambda: vault.put(ref, b"version 2", ctx=as_(SERVICE, "serve-user")),
            lambda: vault.get(ref, ctx=as_(SERVICE, "serve-user")),
            lambda: vault.register_subject("intl", "bob", "US"),
        ):
            with pytest.raises(AuditUnavailable, match="audit entry not written"):
                attempt()
        # put and get overlap the audit fsync with shard I/O, but the custodian is
        # asked for a key only once the entry is durable: never, here
        assert custodian.unwraps == 0
        # nothing happened: no shard, no pending version, no subject, no half entry
        assert files_under(config.parent / "nodes") == nodes
        assert vault.cells["US"].catalog.claim_collectable(float("inf")) == []
        assert vault.directory.home("intl", "bob") is None
        filler.unlink()
        vault.governance.release_logs()
        # every entry written before is intact, and the log works again once there is room
        assert [e.to_bytes() for e in entries(vault)] == logged
        assert vault.get(ref, ctx=as_(SERVICE, "serve-user")) == b"version 1"
        assert [i.version for i in vault.versions(ref)] == [1]


def test_a_failed_put_answers_only_once_its_decision_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Put overlaps the audit fsync with shard writes; an error is an answer too."""

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            raise OSError(5, "the source broke")

    real_write = AuditLog._write

    def slow_write(self: AuditLog, records: bytes, entries_end: int) -> OSError | None:
        time.sleep(0.3)  # a slow disk: the put fails long before the entry is durable
        return real_write(self, records, entries_end)

    with Vault.open(load(make_deployment(tmp_path / "deploy"))) as vault:
        register(vault, SERVICE)
        vault.register_subject("intl", "alice", "US")
        log = vault.governance.cell("US").log
        monkeypatch.setattr(AuditLog, "_write", slow_write)
        ctx = as_(SERVICE, "serve-user")
        with pytest.raises(OSError, match="the source broke"):
            vault.put(ObjectRef("intl", "alice", "k"), Failing(), ctx=ctx)  # type: ignore[arg-type]
        assert [e.result for e in entries_of(vault, ctx)] == ["allowed"]
        assert log.size == len(entries(vault))


def _audit_writes_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        AuditLog, "_write_batches", lambda self, batches: OSError(errno.ENOSPC, "disk full")
    )


@pytest.mark.parametrize("call", ["get", "open_read", "stat", "where"])
def test_not_found_is_not_answered_without_its_audit_entry(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    vault.register_subject("intl", "alice", "US")
    _audit_writes_fail(monkeypatch)
    with pytest.raises(AuditUnavailable):
        getattr(vault, call)(ObjectRef("intl", "alice", "nothing-here"))


@pytest.mark.parametrize("call", ["get", "put", "list"])
def test_forgotten_is_not_answered_without_its_audit_entry(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    ref = ObjectRef("intl", "alice", "k")
    vault.register_subject("intl", "alice", "US")
    vault.put(ref, b"x")
    forget_approved(vault, "intl", "alice")
    _audit_writes_fail(monkeypatch)
    attempts = {
        "get": lambda: vault.get(ref),
        "put": lambda: vault.put(ref, b"y"),
        "list": lambda: vault.list("intl", "alice"),
    }
    with pytest.raises(AuditUnavailable):
        attempts[call]()


def test_a_record_naming_another_home_is_not_answered_without_its_audit_entry(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = vault.register_subject("intl", "bob", "SG")
    vault.directory.remove("intl", "bob")
    vault.directory.add("intl", "bob", "US")
    vault.cells["US"].catalog.add_subject(record)
    _audit_writes_fail(monkeypatch)
    with pytest.raises(AuditUnavailable):
        vault.get(ObjectRef("intl", "bob", "k"))
