"""kill -9 during a put: the object reads as the old bytes or the new, never a mix.

A child process opens the same deployment and overwrites an object; its
on_step hook SIGKILLs it at a chosen step (or the parent kills it at a random
moment). The parent then reads, runs gc with no grace, and checks that the
node directories hold exactly the shards of the committed versions.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SEGMENT, files_under, shard_paths
from shardvault.config import load
from shardvault.errors import Conflict
from shardvault.model import ObjectRef
from shardvault.vault import Vault

CHILD = r"""
import os, random, signal, sys, time
from pathlib import Path
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault

config, key, seed, size, step = sys.argv[1:6]

def on_step(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

vault = Vault.open(load(Path(config)), on_step=on_step)
data = random.Random(int(seed)).randbytes(int(size))
print("ready", flush=True)
started = time.perf_counter()
vault.put(ObjectRef("intl", "alice", key), data)
print(f"done {time.perf_counter() - started:.6f}", flush=True)
"""

KEY = "crash/target.bin"
SIZE = 3 * SEGMENT + 5


def payload(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def start_child(
    vault: Vault, config_path: Path, seed: int, size: int, step: str
) -> subprocess.Popen[str]:
    # the parent keeps its audit log open: the child appends to it too, and dies mid-put
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config_path), KEY, str(seed), str(size), step],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def committed_shards(vault: Vault, ref: ObjectRef) -> set[Path]:
    versions = [info.version for info in vault.versions(ref)]
    return {path for version in versions for path in shard_paths(vault, ref, version)}


def assert_only_committed_shards_after_gc(vault: Vault, ref: ObjectRef, nodes: Path) -> None:
    vault.gc(grace_seconds=0)
    assert files_under(nodes) == committed_shards(vault, ref)
    catalog = vault.cells["US"].catalog
    assert catalog.claim_collectable(float("inf")) == []


@pytest.mark.parametrize(
    ("step", "survivor"),
    [
        ("reserved", "old"),
        ("segment-written", "old"),
        ("shards-written", "old"),
        ("shards-committed", "old"),
        ("committed", "new"),
    ],
)
def test_kill_at_each_step(
    vault: Vault, alice: ObjectRef, config_path: Path, step: str, survivor: str
) -> None:
    ref = ObjectRef("intl", "alice", KEY)
    old, new = payload(1), payload(2)
    vault.put(ref, old)
    nodes = config_path.parent / "nodes"
    before = files_under(nodes)

    child = start_child(vault, config_path, 2, SIZE, step)
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    assert out.startswith("ready") and "done" not in out

    expected = old if survivor == "old" else new
    assert vault.get(ref) == expected
    pending = vault.cells["US"].catalog.claim_collectable(float("inf"))
    if step == "committed":
        assert pending == []
        assert [info.version for info in vault.versions(ref)] == [2, 1]
    else:
        # claimed for collection: the killed put's row can no longer commit
        assert [(r.ref, r.version, r.state.value) for r in pending] == [(ref, 2, "deleted")]
    left = files_under(nodes) - before
    if step == "shards-committed":
        assert len(left) == 6 and all("shards" in p.parts for p in left)
    if step in ("segment-written", "shards-written"):
        assert left and all("tmp" in p.parts for p in left)

    assert_only_committed_shards_after_gc(vault, ref, nodes)
    assert vault.get(ref) == expected
    # and the next write works as usual
    vault.put(ref, b"after the crash")
    assert vault.get(ref) == b"after the crash"


def test_kill_at_random_moments_during_a_multi_segment_put(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    ref = ObjectRef("intl", "alice", KEY)
    size = 48 * SEGMENT + 3
    nodes = config_path.parent / "nodes"
    current = payload(100, size)
    vault.put(ref, current)

    calibrate = start_child(vault, config_path, 101, size, "never")
    out, err = calibrate.communicate(timeout=60)
    assert calibrate.returncode == 0, err
    duration = float(out.split()[-1])
    current = payload(101, size)
    assert vault.get(ref) == current

    rng = random.Random(20240611)
    outcomes = []
    for seed in range(102, 110):
        child = start_child(vault, config_path, seed, size, "never")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, duration * 1.3))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        got = vault.get(ref)
        new = payload(seed, size)
        assert got in (current, new), f"seed {seed}: neither the old nor the new bytes"
        outcomes.append("new" if got == new else "old")
        current = got
        assert_only_committed_shards_after_gc(vault, ref, nodes)
        assert vault.get(ref) == current
    assert len(outcomes) == 8


REGISTER_CHILD = r"""
import os, signal, sys
from pathlib import Path
from shardvault.catalog.sqlite import SqliteCatalog
from shardvault.config import load
from shardvault.vault import Vault

def killed(self, record):  # after the directory's row, before the cell's
    os.kill(os.getpid(), signal.SIGKILL)

SqliteCatalog.add_subject = killed
Vault.open(load(Path(sys.argv[1]))).register_subject("intl", "carol", "US")
"""


@pytest.mark.parametrize("again_in", ["US", "EU"])
def test_a_registration_killed_between_its_two_writes_can_be_made_again(
    config_path: Path, again_in: str
) -> None:
    # the directory kept a home with no subject behind it: every use said "register it",
    # and registering said "already registered", in any cell, for good
    child = subprocess.run(
        [sys.executable, "-c", REGISTER_CHILD, str(config_path)], capture_output=True, timeout=60
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    with Vault.open(load(config_path)) as vault:
        assert vault.directory.home("intl", "carol") == "US"  # what the kill left
        vault.register_subject("intl", "carol", again_in)
        ref = ObjectRef("intl", "carol", "k")
        vault.put(ref, b"kept")
        assert vault.get(ref) == b"kept"
        assert vault.subject("intl", "carol").jurisdiction == again_in
        with pytest.raises(Conflict, match="already registered"):  # now it is
            vault.register_subject("intl", "carol", "SG")


@pytest.mark.parametrize(
    ("method", "size"),
    [("insert_committed", 100), ("commit", 3 * SEGMENT + 5)],
    ids=["small", "reserved"],
)
def test_an_interrupt_right_after_the_commit_leaves_the_version_readable(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, method: str, size: int
) -> None:
    # Ctrl-C landing once the catalog had committed (or a flush failing after it) made
    # the put discard every shard: the version was listed, and could not be read
    ref = ObjectRef("intl", "alice", KEY)
    vault.register_subject("intl", "alice", "US")
    vault.put(ref, b"old")
    catalog = vault.cells["US"].catalog
    committed = getattr(catalog, method)

    def then_interrupted(*args: object, **kwargs: object) -> None:
        committed(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(catalog, method, then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        vault.put(ref, payload(7, size))
    monkeypatch.undo()
    assert vault.stat(ref).version == 2
    assert vault.get(ref) == payload(7, size)
    vault.gc(grace_seconds=0)
    assert vault.get(ref) == payload(7, size)
