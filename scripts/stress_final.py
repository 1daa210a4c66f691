"""The stress harness's last checks, once nothing runs but them (`scripts/stress.py`).

A last gc and repair must lose nothing acknowledged: every key then reads as one
of its acceptable states. Each cell's audit log must verify from an export, as an
outsider verifies it (the CLI's `audit export` and `audit verify`). And the nodes
must hold exactly the shards of the committed versions: anything more is a
leftover gc did not remove.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from stress_check import Checker
from stress_roles import TENANT

from shardvault.config import load
from shardvault.errors import NotFound, SubjectForgotten
from shardvault.model import ObjectRef
from shardvault.vault import Vault


def final_checks(config: Path, workdir: Path, checker: Checker) -> None:
    with Vault.open(load(config)) as vault:
        leftover = _extra_shards(vault)
        if leftover:
            checker.notes.append(f"before the last gc, {_shown(leftover)}")
        _sweep(vault, checker)
        for scrub in (False, True):
            repair = vault.repair(scrub=scrub)
            checker.problems += [f"final repair: {problem}" for problem in repair.problems]
        _sweep(vault, checker)
        _read_everything(vault, checker)
        leftover = _extra_shards(vault)
        if leftover:
            checker.problems.append(f"after the last gc, {_shown(leftover)}")
    _verify_audit_logs(config, workdir, checker)


def _sweep(vault: Vault, checker: Checker) -> None:
    skipped = vault.gc(grace_seconds=0).skipped_nodes
    if skipped:
        checker.problems.append(f"final gc skipped nodes {', '.join(skipped)}")


def _read_everything(vault: Vault, checker: Checker) -> None:
    for subject, key in checker.every_key():
        where = f"final get {subject}/{key}"
        try:
            data = vault.get(ObjectRef(TENANT, subject, key))
            seen: str | None = hashlib.sha256(data).hexdigest()
        except (NotFound, SubjectForgotten):
            seen = None
        except Exception as exc:
            checker.problems.append(f"{where} failed: {type(exc).__name__}: {exc}")
            continue
        checker.observe(subject, key, seen, where)


def _shown(extra: dict[str, int]) -> str:
    """Shards held beyond n a committed version, or missing below it, per cell."""
    return "; ".join(
        f"{cell}: {count} shard(s) beyond the committed versions' n each"
        if count > 0
        else f"{cell}: {-count} shard(s) missing from the committed versions' n each"
        for cell, count in sorted(extra.items())
    )


def _extra_shards(vault: Vault) -> dict[str, int]:
    """Per cell, the shards its nodes hold beyond n for each committed version (negative:
    fewer than that)."""
    shards: dict[str, int] = {}
    for usage in vault.node_usage():
        cell = str(usage.node.jurisdiction)
        shards[cell] = shards.get(cell, 0) + usage.shards
    width = vault.config.k + vault.config.m
    extra = {}
    for crowding in vault.crowding():
        beyond = shards.get(str(crowding.jurisdiction), 0) - crowding.versions * width
        if beyond:
            extra[str(crowding.jurisdiction)] = beyond
    return extra


def _verify_audit_logs(config: Path, workdir: Path, checker: Checker) -> None:
    keys = json.loads(_cli(config, "audit", "keys", "--json", checker=checker) or "{}")
    for cell, vkey in sorted(keys.get("cells", {}).items()):
        export = workdir / f"audit-{cell}"
        if _cli(config, "audit", "export", "--cell", cell, str(export), checker=checker) is None:
            continue
        _cli(config, "audit", "verify", str(export), "--key", vkey,
             "--cosigner", keys["partner"], checker=checker)  # fmt: skip


def _cli(config: Path, *args: str, checker: Checker) -> str | None:
    command = [sys.executable, "-m", "shardvault", "--config", str(config), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        checker.problems.append(f"shardvault {' '.join(args[:2])}: {done.stderr.strip()}")
        return None
    return done.stdout
