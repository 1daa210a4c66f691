"""Run a command on a slower VM: a real-time process takes a share of every CPU.

This VM's CPU runs at 63-172 % of its machine kind's rated speed from hour to hour,
and the small-object targets assume the rated speed. To measure near it when the VM
runs fast, one process per CPU, pinned to it at SCHED_FIFO priority, busy-loops for
BUSY of every period and sleeps the rest, as a host's other tenants would take it.
It is not a slower clock: what it takes comes in slices, so a run under it reads its
speed from (a) of `bench_vault.py` and is compared by that. Needs root (SCHED_FIFO);
the busy processes end with the command, however it ends.

    sudo .venv/bin/python bench/slower_vm.py --busy 0.25 -- make bench
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time


def _take(cpu: int, busy: float, period: float) -> None:
    """In a child: hold CPU `cpu` for busy x period of every period, for ever."""
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    on, off = busy * period, (1 - busy) * period
    clock = time.perf_counter
    while True:
        end = clock() + on
        while clock() < end:
            pass
        time.sleep(off)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=float, required=True, help="share of each CPU taken, 0-1")
    parser.add_argument("--period-ms", type=float, default=10.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not 0 < args.busy < 1:
        parser.error("give --busy between 0 and 1, then -- and the command to run")
    takers = []
    for cpu in sorted(os.sched_getaffinity(0)):
        pid = os.fork()
        if pid == 0:
            try:
                _take(cpu, args.busy, args.period_ms / 1000)
            finally:
                os._exit(1)
        takers.append(pid)
    try:
        time.sleep(0.2)
        if any(os.waitpid(pid, os.WNOHANG)[0] for pid in takers):
            print("error: could not take the CPUs (SCHED_FIFO needs root)", file=sys.stderr)
            return 1
        return subprocess.run(command, check=False).returncode
    finally:
        for pid in takers:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):  # one that died
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


if __name__ == "__main__":
    sys.exit(main())
