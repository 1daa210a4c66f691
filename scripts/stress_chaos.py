"""The stress harness's damage role (`scripts/stress.py --damage`): a disk going bad under load.

One node at a time, it flips bytes in, truncates or deletes a few of the node's
shard files and pack files, while workers read and write and maintenance runs.
It then waits until a scrubbing repair has begun and ended after the damage
(read from the maintenance journals) before it touches another node, so no
stripe ever has more than one node's worth of bad shards (at most m): every read
must still return exact bytes, and the final scrub must leave nothing missing.
Each damage is journalled, fsynced, before it is done; an incarnation that finds
damage in its journal waits for a scrub begun after its own start, since the
killed one may have damaged more than it recorded.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from stress_roles import Journal, count_starts

from shardvault.config import load

FILES_PER_ROUND = (1, 4)  # files damaged on a node before waiting for a scrub
HOW = ("flip", "truncate", "delete")
HEARTBEAT_SECONDS = 5.0  # a record while waiting, so the watchdog sees the wait is alive


def damage(config: Path, journal_path: Path, index: int, seed: int) -> None:
    """Damage one node, wait for a scrub after it, and again, until killed."""
    had_damaged = journal_path.exists() and b'"t": "damage"' in journal_path.read_bytes()
    journal = Journal(journal_path)
    incarnation = count_starts(journal_path)
    journal.write(t="start", incarnation=incarnation)
    rng = random.Random(f"{seed}/chaos-{index}/{incarnation}")
    nodes = [Path(node.location) for node in load(config).nodes]
    maintenance = journal_path.parent
    if had_damaged:
        _wait_for_scrub(maintenance, time.time(), journal)
    while True:
        node = rng.choice(nodes)
        files = _damageable(node)
        for path in rng.sample(files, min(len(files), rng.randint(*FILES_PER_ROUND))):
            how = rng.choice(HOW)
            journal.write(t="damage", node=node.name, file=str(path.relative_to(node)), how=how)
            _damage(path, how, rng)
        _wait_for_scrub(maintenance, time.time(), journal)


def _damageable(node: Path) -> list[Path]:
    """The node's shard files and pack files, in a stable order for the seed."""
    shards = [path for path in (node / "shards").rglob("*") if path.is_file()]
    return sorted(shards + list((node / "packs").glob("*.pack")))


def _damage(path: Path, how: str, rng: random.Random) -> None:
    try:
        if how == "delete":
            path.unlink()
            return
        size = path.stat().st_size
        if how == "truncate":
            os.truncate(path, rng.randrange(size) if size else 0)
            return
        with open(path, "r+b") as file:
            for _ in range(rng.randint(1, 3)):
                offset = rng.randrange(size) if size else 0
                file.seek(offset)
                byte = file.read(1) or b"\0"
                file.seek(offset)
                file.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
    except FileNotFoundError:  # gc or a compaction removed it first: nothing to damage
        pass


def _wait_for_scrub(journals: Path, after: float, journal: Journal) -> None:
    """Return once a maintenance process journals a scrubbing repair begun after AFTER."""
    beat = time.monotonic()
    while not any(_scrubbed_since(path, after) for path in journals.glob("maintenance-*")):
        time.sleep(0.2)
        if time.monotonic() - beat > HEARTBEAT_SECONDS:
            journal.write(t="wait")
            beat = time.monotonic()
    journal.write(t="repaired")


def _scrubbed_since(path: Path, after: float) -> bool:
    for line in path.read_bytes().splitlines():
        if b'"scrub": true' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # cut short by a kill
            continue
        if float(record["began"]) > after:
            return True
    return False
