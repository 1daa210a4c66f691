"""The stress harness's last checks, once nothing runs but them (`scripts/stress.py`).

A last gc, repair and scrub must lose nothing acknowledged: every key then reads
as one of its acceptable states, and a second scrub finds nothing left to
rebuild. Each cell's audit log must verify from an export, as an outsider
verifies it (the CLI's `audit export` and `audit verify`). And the nodes
must hold exactly the shards of the committed versions: anything more is a
leftover gc did not remove. Each step is bounded in time: one that hangs is a
problem reported with every thread's stack, not a harness that never ends.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from stress_check import Checker
from stress_roles import TENANT, planted_hang

from shardvault.config import load
from shardvault.errors import NotFound, SubjectForgotten
from shardvault.model import ObjectRef
from shardvault.vault import Vault

T = TypeVar("T")


FINAL_STEP_SECONDS = 300.0
"""How long one final step (the vault's opening, a gc, a repair, the read of every key)
may take before it is reported hung: far beyond any of them after a long run here."""


class FinalStepHung(Exception):
    """A final step made no progress in time; its thread is left waiting."""


def final_checks(
    config: Path, workdir: Path, checker: Checker, step_seconds: float, hang: bool = False
) -> None:
    """Run the last checks, each step bounded by STEP_SECONDS (FinalStepHung if one is not
    done by then, with every thread's stack in WORKDIR); HANG plants a hang in the reads."""
    stacks = workdir / "final.stacks"

    def bounded(what: str, step: Callable[[], T]) -> T:
        return _bounded(what, step, step_seconds, stacks)

    vault = bounded("open of the vault", lambda: Vault.open(load(config)))
    hung = False
    try:
        leftover = bounded("count of shards", lambda: _extra_shards(vault))
        if leftover:
            checker.notes.append(f"before the last gc, {_shown(leftover)}")
        bounded("gc", lambda: _sweep(vault, checker))
        for scrub in (False, True):
            repair = bounded("scrub" if scrub else "repair", partial(vault.repair, scrub=scrub))
            checker.problems += [f"final repair: {problem}" for problem in repair.problems]
        bounded("second gc", lambda: _sweep(vault, checker))
        bounded("second scrub", lambda: _scrub_in_a_new_process(config, checker))
        if hang:
            bounded("read of every key", planted_hang)
        bounded("read of every key", lambda: _read_everything(vault, checker))
        leftover = bounded("count of shards", lambda: _extra_shards(vault))
        if leftover:
            checker.problems.append(f"after the last gc, {_shown(leftover)}")
    except FinalStepHung:
        hung = True  # its thread may hold what closing the vault would wait for
        raise
    finally:
        if not hung:
            vault.close()
    bounded("audit verification", lambda: _verify_audit_logs(config, workdir, checker))


def _bounded(what: str, step: Callable[[], T], seconds: float, stacks: Path) -> T:
    """STEP's result, run on a thread of its own that is given up on after SECONDS."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(step())
        except BaseException as exc:  # raised again on the harness's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"final {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with open(stacks, "a") as file:
            faulthandler.dump_traceback(file, all_threads=True)
        raise FinalStepHung(
            f"final {what} made no progress in {seconds:.0f} s (hung); "
            f"every thread's stack: {stacks}"
        )
    if failure:
        raise failure[0]
    return outcome[0]


def _scrub_in_a_new_process(config: Path, checker: Checker) -> None:
    """A scrub by a process of its own must find nothing to rebuild: this one still holds
    descriptors of packs its gc compacted away, and read shards through them that a new
    process finds missing (how a stress run's compaction losing 13 shards went unseen)."""
    report = json.loads(_cli(config, "repair", "--scrub", "--json", checker=checker) or "{}")
    if report.get("rebuilt") or report.get("problems"):
        checker.problems.append(
            f"a second final scrub, in a new process, rebuilt {report['rebuilt']} shard(s) "
            f"and left {len(report['problems'])} version(s): the first did not leave it clean"
        )


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
