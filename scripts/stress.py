"""The kill -9 stress harness: workers and maintenance on one deployment, killed at random.

    .venv/bin/python scripts/stress.py --seed 1 --minutes 5 --workers 3 --maints 2 --dir DIR

Writes a demo deployment in DIR (small segments, so multi-segment puts are cheap),
starts W worker processes (a seeded mix of put, overwrite, get, rm and a forget
and registration of a subject of their own, through `Vault`) and K maintenance
processes (gc with no grace and repair, as cron runs them), and SIGKILLs one of
them at random moments, starting it again. Each worker journals, fsynced, what it
intends before asking and what was acknowledged after (`scripts/stress_roles.py`);
the checker (`scripts/stress_check.py`) reads the journals as they grow and flags
a get that returned bytes no put of the key could have left, or none where an
acknowledged put should be. At the end, with nothing killed, it sweeps and
repairs once more, reads every key, verifies each cell's audit log from an
export, and checks that the nodes hold exactly the shards of committed versions.
It prints the kills, the acknowledged requests by kind and `PROBLEMS: N`, one line
each; exit 1 if there are any, 2 for bad usage. The choices follow the seed; their
timing does not. docs/architecture.md, "Testing under kill -9", says what it covers.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from stress_chaos import damage
from stress_check import Checker
from stress_final import FINAL_STEP_SECONDS, FinalStepHung, final_checks
from stress_roles import SEGMENT_SIZE, SHARED_SUBJECTS, Worker, maintain, set_up
from stress_watchdog import Watchdog, dump_stacks_on_signal

from shardvault.demo import write_demo

ROLES = ("worker", "maintenance", "chaos")
HANG_SECONDS = 20.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = Path(args.dir).absolute()
    config = root / "deploy" / "shardvault.toml"
    if args.role:  # a child of the harness
        name = f"{args.role}-{args.index}"
        journal = root / "journals" / f"{name}.jsonl"
        stacks = dump_stacks_on_signal(root / "logs" / f"{name}.stacks")  # noqa: F841 - kept open
        if args.role == "worker":
            hang = name in args.plant_hang
            Worker(config, journal, args.index, args.seed, args.workers, hang).run()
        elif args.role == "chaos":
            damage(config, journal, args.index, args.seed)
        else:
            maintain(config, journal, args.index, args.seed)
        return 0
    if problem := _bad_usage(args, root):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return Harness(args, root, config).run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--maints", type=int, default=2)
    parser.add_argument("--dir", required=True, help="a new or empty directory to work in")
    parser.add_argument(
        "--damage", action="store_true", help="damage one node's shard and pack files at a time"
    )
    # for the harness's own tests: a shorter watchdog, and a hang planted in a process
    parser.add_argument("--hang-seconds", type=float, default=HANG_SECONDS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--final-step-seconds", type=float, default=FINAL_STEP_SECONDS, help=argparse.SUPPRESS
    )
    parser.add_argument("--plant-hang", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _bad_usage(args: argparse.Namespace, root: Path) -> str:
    if args.minutes <= 0 or args.workers < 1 or args.maints < 0:
        return "--minutes must be above 0, --workers at least 1 and --maints at least 0"
    if args.damage and args.maints < 1:
        return "--damage needs a maintenance process to repair what it damages: --maints 1 or more"
    if args.hang_seconds <= 0 or args.final_step_seconds <= 0:
        return "--hang-seconds and --final-step-seconds must be above 0"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        return f"{root} is not an empty directory; give a new one"
    return ""


class Harness:
    """Starts the processes, kills and restarts them, and checks as the journals grow."""

    def __init__(self, args: argparse.Namespace, root: Path, config: Path) -> None:
        self.args = args
        self.root = root
        self.config = config
        self.rng = random.Random(f"{args.seed}/harness")
        self.checker = Checker()
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.offsets: dict[str, int] = {}
        self.watchdog = Watchdog(root, args.hang_seconds)
        self.kills: dict[str, int] = {role: 0 for role in ROLES if role != "chaos" or args.damage}

    def run(self) -> int:
        try:
            return self._run()
        finally:  # the harness failing or interrupted leaves none of its processes running
            for child in self.children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait()

    def _run(self) -> int:
        self._deploy()
        names = [f"worker-{i}" for i in range(self.args.workers)]
        names += [f"maintenance-{i}" for i in range(self.args.maints)]
        names += ["chaos-0"] if self.args.damage else []
        for name in names:
            self._start(name)
        deadline = time.monotonic() + self.args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(0.5, 3.0))
            self._reap_crashed()
            self._restart_hung()
            victim = self.rng.choice(names)
            if not self.watchdog.quiet(victim):  # a kill must not hide a hang
                self._kill(victim)
                self.kills[victim.split("-")[0]] += 1
                self._start(victim)
            self._read_journals()
        self._restart_hung()
        for name in names:
            self._kill(name)
        self._reap_crashed()
        self._read_journals()
        try:
            final_checks(self.config, self.root / "final", self.checker,
                         self.args.final_step_seconds, "final" in self.args.plant_hang)  # fmt: skip
        except FinalStepHung as hung:
            self.checker.problems.append(str(hung))
            code = self._summary()
            sys.stdout.flush()
            os._exit(code)  # the hung step's thread would hold the interpreter's exit
        return self._summary()

    def _restart_hung(self) -> None:
        """Report each process the watchdog finds hung, with its stacks, then restart it."""
        for name in self.watchdog.hung():
            self.checker.problems.append(self.watchdog.report(name, self.children[name]))
            self._kill(name)
            self._start(name)

    def _deploy(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("journals", "logs", "final"):
            (self.root / sub).mkdir()
        path = write_demo(self.config.parent)
        text = path.read_text().replace("segment_size = 1048576", f"segment_size = {SEGMENT_SIZE}")
        path.write_text(text)
        set_up(self.config)
        for subject in SHARED_SUBJECTS.values():
            self.checker.subject(subject, "live")

    def _start(self, name: str) -> None:
        role, index = name.split("-")
        command = [sys.executable, str(Path(__file__).absolute()), "--role", role]
        command += ["--index", index, "--seed", str(self.args.seed), "--dir", str(self.root)]
        command += ["--workers", str(self.args.workers)]
        command += [f"--plant-hang={planted}" for planted in self.args.plant_hang]
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            self.children[name] = subprocess.Popen(
                command, stdout=log, stderr=log, preexec_fn=_die_with_parent
            )
        self.watchdog.started(name)

    def _kill(self, name: str) -> None:
        child = self.children[name]
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
        if child.returncode != -signal.SIGKILL:  # it ended on its own before the kill
            self._crashed(name, child.returncode)

    def _reap_crashed(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None and child.returncode != -signal.SIGKILL:
                self._crashed(name, child.returncode)
                self._start(name)

    def _crashed(self, name: str, code: int) -> None:
        lines = (self.root / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        last = lines[-1] if lines else "(no output)"
        self.checker.problems.append(f"{name} exited {code} by itself: {last}")
        self.children[name].returncode = -signal.SIGKILL  # reported once

    def _read_journals(self) -> None:
        """Feed the checker each journal's whole records written since the last read."""
        for path in sorted((self.root / "journals").iterdir()):
            with open(path, "rb") as journal:
                journal.seek(self.offsets.get(path.name, 0))
                data = journal.read()
            whole = data.rfind(b"\n") + 1
            self.checker.feed_bytes(path.stem, data[:whole], self.offsets.get(path.name, 0))
            self.offsets[path.name] = self.offsets.get(path.name, 0) + whole

    def _summary(self) -> int:
        checker = self.checker
        checker.settle()
        print(f"seed {self.args.seed}, {self.args.minutes} min, {self.args.workers} workers, "
              f"{self.args.maints} maintenance, in {self.root}")  # fmt: skip
        print("kills: " + ", ".join(f"{role} {n}" for role, n in self.kills.items()))
        print("acked: " + _counts(checker.acked))
        print("failed (never acknowledged): " + (_counts(checker.failed) or "none"))
        print(checker.peeks_line())
        print(f"torn journal records: {checker.torn_records}")
        for note in checker.notes:
            print(f"note: {note}")
        print(f"PROBLEMS: {len(checker.problems)}")
        for problem in checker.problems:
            print(f"  {problem}")
        for dump in self.watchdog.dumps:
            print(dump)
        return 1 if checker.problems else 0


def _die_with_parent() -> None:
    """In a child, before exec: SIGKILL it when the harness dies (Linux's PR_SET_PDEATHSIG),
    so a harness killed itself leaves no worker running for good."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
