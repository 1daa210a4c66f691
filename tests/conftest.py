"""Shared fixtures: a demo deployment on disk, opened as an embedded vault.

The demo writes 1 MiB segments; tests rewrite it to SEGMENT bytes so that
multi-segment objects stay small and the suite stays fast. Nodes keep every
shard as its own file here (``pack_limit = 0``), so tests can damage a shard
by path; tests/nodes/test_packs.py covers the packed layout the demo uses, and
tests that damage packed shards find their records with tests/shard_spots.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from shardvault import durability
from shardvault.config import Config, load
from shardvault.demo import write_demo
from shardvault.errors import StorageError
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.marker import MARKER
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault

SEGMENT = 65536

NO_SKIPS = "SHARDVAULT_NO_SKIPS"
"""Set to 1 (``.ci/run`` does) and a test that skips for want of something on the
machine (FUSE and the right to mount, RWF_NOWAIT reads, a tar tool) fails instead:
in CI a missing component is a failure, not a quiet pass."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get(NO_SKIPS) == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, and {NO_SKIPS}=1 forbids skips: {report.longrepr}"


def make_deployment(
    directory: Path,
    *,
    segment_size: int = SEGMENT,
    pack_limit: int = 0,
    edit: Callable[[str], str] | None = None,
) -> Path:
    """A demo deployment in `directory` with a small segment size; returns the config path."""
    path = write_demo(directory)
    text = path.read_text().replace("segment_size = 1048576", f"segment_size = {segment_size}")
    text = text.replace('backend = "local"', f'backend = "local"\npack_limit = {pack_limit}')
    if edit is not None:
        text = edit(text)
    path.write_text(text)
    return path


SPARES = {"us-n7": "us-fac-1", "us-n8": "us-fac-2"}
"""The nodes repair and spread tests add to the demo's US cell (3 + 3 + 2 nodes then)."""


def with_nodes(directory: Path, nodes: Mapping[str, str] = SPARES, pack_limit: int = 0) -> Path:
    """A demo deployment (`make_deployment`) with NODES (id: facility) added to its US cell,
    their directories made; returns the config path."""
    config = make_deployment(directory, pack_limit=pack_limit)
    add_nodes(config, nodes, pack_limit)
    return config


def add_nodes(config: Path, nodes: Mapping[str, str], pack_limit: int = 0) -> None:
    """Add NODES (id: facility), local-directory nodes of the US cell, to the deployment."""
    for node, facility in nodes.items():
        config.write_text(
            config.read_text()
            + f'\n[[nodes]]\nid = "{node}"\njurisdiction = "US"\nfacility = "{facility}"\n'
            f'backend = "local"\npack_limit = {pack_limit}\npath = "nodes/US/{node}"\n'
        )
        (config.parent / "nodes" / "US" / node).mkdir()


def named_copies(manifest: Manifest) -> dict[str, set[str]]:
    """The one copy of each shard the manifest names, by node, under the name it names."""
    held: dict[str, set[str]] = {}
    for index, node in enumerate(manifest.nodes):
        name = shard_name(manifest.object_id, manifest.version, index, manifest.generation(index))
        held.setdefault(node, set()).add(name)
    return held


def manifest_of(vault: Vault, ref: ObjectRef, version: int | None = None) -> Manifest:
    home = vault.subject(ref.tenant, ref.subject).jurisdiction
    record = vault.cells[home].catalog.get_version(ref, version)
    assert record is not None and record.manifest is not None
    return Manifest.from_bytes(record.manifest)


def shard_paths(vault: Vault, ref: ObjectRef, version: int | None = None) -> list[Path]:
    """The shard file of each index (0..n-1) of a version, on its local-directory node."""
    manifest = manifest_of(vault, ref, version)
    home = vault.subject(ref.tenant, ref.subject).jurisdiction
    paths = []
    for index, node in enumerate(manifest.nodes):
        store = vault.cells[home].store(node)
        assert isinstance(store, LocalDirShardStore)
        generation = manifest.generation(index)  # above 0 once rebuilt on its own node
        name = shard_name(manifest.object_id, manifest.version, index, generation)
        paths.append(store.shard_path(name))
    return paths


def syncs_failing(
    monkeypatch: pytest.MonkeyPatch, vault: Vault, before: Callable[[], None] = lambda: None
) -> None:
    """Every writer the vault's US nodes open fails its sync, after BEFORE: a disk gone
    between a copy's commit and its sync, wherever a rebuild puts it."""

    def broken_sync() -> None:
        before()
        raise StorageError("the disk went away")

    for store in vault.cells["US"].stores.values():

        def open_writer(shard: str, real: Any = store.open_writer) -> Any:
            writer = real(shard)
            writer.sync = broken_sync
            return writer

        monkeypatch.setattr(store, "open_writer", open_writer)


def frames_of(thread: threading.Thread) -> Iterator[types.FrameType]:
    """THREAD's frames, innermost first: where a thread a test started waits."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        yield frame
        frame = frame.f_back


def wait_until_inside(
    thread: threading.Thread, code: types.CodeType, seconds: float = 30.0
) -> None:
    """Return once THREAD runs CODE (a frame of it on THREAD's stack). Fail, showing
    where THREAD is, if it ends or SECONDS pass first: a poll without a bound hung
    the whole suite once, where it should have failed."""
    deadline = time.monotonic() + seconds
    while not any(frame.f_code is code for frame in frames_of(thread)):
        if not thread.is_alive() or time.monotonic() >= deadline:
            stack = sys._current_frames().get(thread.ident or 0)
            where = "".join(traceback.format_stack(stack)) if stack else "it ended\n"
            pytest.fail(f"{thread.name} never ran {code.co_name}; where it is:\n{where}")
        time.sleep(0.01)


def open_files(under: Path) -> list[str]:
    """The files under UNDER this process holds open."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith(f"{under}/"):
                found.append(target)
    return found


def files_under(root: Path) -> set[Path]:
    """Every file under root but the node markers (nodes/marker.py): those name the node,
    written on first open, and hold no user data."""
    return {path for path in root.rglob("*") if path.is_file() and path.name != MARKER}


@contextlib.contextmanager
def tmpfs_mounted(directory: Path) -> Iterator[Path]:
    """A tmpfs mounted on DIRECTORY (yielded): a disk of its own. Needs the right to mount
    (root), as the hung-disk tests do: skips otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.fsencode(directory)
    if libc.mount(b"tmpfs", target, b"tmpfs", 0, b"size=4m"):
        pytest.skip(f"cannot mount a tmpfs here: {os.strerror(ctypes.get_errno())}")
    try:
        yield directory
    finally:
        libc.umount2(target, 2)  # MNT_DETACH


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return make_deployment(tmp_path / "deploy")


@pytest.fixture
def deployment(config_path: Path) -> Iterator[tuple[Config, Vault]]:
    """(config, vault) over a fresh three-cell demo deployment with small segments."""
    cfg = load(config_path)
    vault = Vault.open(cfg)
    try:
        yield cfg, vault
    finally:
        vault.close()


@pytest.fixture
def vault(deployment: tuple[Config, Vault]) -> Vault:
    return deployment[1]


@pytest.fixture
def alice(vault: Vault) -> ObjectRef:
    """A US subject of tenant intl, and a ref to one of her objects."""
    vault.register_subject("intl", "alice", "US")
    return ObjectRef("intl", "alice", "photos/cat.jpg")


@pytest.fixture
def synced_directories(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every directory `durability.fsync_directory` makes durable, in order (it still does)."""
    synced: list[Path] = []
    real = durability.fsync_directory

    def record(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(durability, "fsync_directory", record)
    return synced


class Flushes:
    """A flush that counts itself and can be told to fail once: a stand-in for a disk's
    write-back error."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.count = 0
        self.fail_next = False
        self.seconds = seconds

    def __call__(self) -> None:
        self.count += 1
        time.sleep(self.seconds)
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")


# A child that runs `repair --scrub` and is killed at the step named: repair's and the
# spread's kill -9 tests run it as `python -c KILLED_REPAIR CONFIG STEP`.
KILLED_REPAIR = r"""
import os, signal, sys
from pathlib import Path
from shardvault.config import load
from shardvault.vault import Vault

config, step = sys.argv[1:3]

def on_step(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

with Vault.open(load(Path(config)), on_step=on_step) as vault:
    print(vault.repair(scrub=True), flush=True)
"""
