"""The CLI under hostile input and surroundings: odd output targets, markup in keys,
closed or full standard streams, a full disk, FIFOs, Ctrl-C. Each is one line, never a
traceback, and leaves nothing half-made behind."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from test_cli import BINARY, Cli

from shardvault.audit import export
from shardvault.audit.log import AuditLog
from shardvault.cli import outfile
from shardvault.errors import InvalidInput, StorageError
from shardvault.governance import Governance
from shardvault.keys import tombstones
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.shown_text import shown

MAX_VERSION = 2**63 - 1


@pytest.fixture
def alice(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    """A fresh `init --demo` deployment through the CLI, with intl/alice and key k."""
    demo = tmp_path / "demo"
    cli = Cli(demo / "shardvault.toml", capsysbinary)
    code, _, err = cli("init", "--demo", str(demo), config=False)
    assert code == 0, err
    cli.ok("subject", "add", "intl", "alice", "--jurisdiction", "US")
    source = tmp_path / "in.txt"
    source.write_bytes(b"payload\n")
    cli.ok("put", "intl", "alice", "k", str(source))
    return cli


@contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at DIRECTORY (the suite runs as root, locally and in CI)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def shardvault(
    config: Path,
    *args: str,
    stdin: bytes | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    **popen: object,
) -> subprocess.CompletedProcess[bytes]:
    """The installed command in its own process, for what needs real file descriptors;
    ENV is added to this process's environment."""
    env = {**os.environ, **(env or {}), "SHARDVAULT_CONFIG": str(config)}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(BINARY), *args],
        input=stdin,
        stderr=subprocess.PIPE,
        env=env,
        timeout=timeout,
        check=False,
        **popen,
    )


def one_error_line(done: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = done.stderr.decode()
    assert done.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# 1. get -o: devices, FIFOs and symlinks are written through, not replaced --------


def test_get_into_a_fifo_writes_through_it(alice: Cli, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert alice.ok("get", "intl", "alice", "k", "-o", str(fifo)) == b""
    reader.join(10)
    assert received == [b"payload\n"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "in.txt", "pipe"]


def test_get_through_a_symlink_replaces_its_target_and_keeps_the_link(
    alice: Cli, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.txt"
    real.write_bytes(b"old")
    links = tmp_path / "links"
    links.mkdir()
    (links / "link").symlink_to(real)
    alice.ok("get", "intl", "alice", "k", "-o", str(links / "link"))
    assert (links / "link").is_symlink()
    assert os.readlink(links / "link") == str(real)
    assert real.read_bytes() == b"payload\n"
    assert [p.name for p in elsewhere.iterdir()] == ["real.txt"]
    assert [p.name for p in links.iterdir()] == ["link"]


def test_get_over_a_file_keeps_its_mode_and_owner(alice: Cli, tmp_path: Path) -> None:
    # it came back 0644 and root's: a 0600 file's data readable by all
    for mode in (0o600, 0o444):
        target = tmp_path / f"kept-{mode:o}"
        target.write_bytes(b"old")
        target.chmod(mode)
        os.chown(target, 1234, 5678)
        alice.ok("get", "intl", "alice", "k", "-o", str(target))
        after = target.stat()
        assert target.read_bytes() == b"payload\n"
        assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (mode, 1234, 5678)


def test_get_over_a_file_this_user_may_not_write_is_exit_2_and_reads_nothing(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the suite runs as root, who may write anything: a refused open stands in for that
    target = tmp_path / "theirs"
    target.write_bytes(b"old")
    real_open = os.open

    def refused(path: object, flags: int, *args: int, **kwargs: object) -> int:
        if Path(str(path)).name == target.name and flags & os.O_WRONLY:  # by dir_fd
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refused)
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", str(target))
    assert line == f"error: cannot write {target}: Permission denied"
    assert target.read_bytes() == b"old"


def test_get_onto_a_symlink_loop_is_exit_2_and_leaves_the_links(alice: Cli, tmp_path: Path) -> None:
    # the loop was broken: its first link replaced by a regular file
    (tmp_path / "one").symlink_to(tmp_path / "two")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", str(tmp_path / "one"))
    assert line.endswith("Too many levels of symbolic links")
    assert (tmp_path / "one").is_symlink() and (tmp_path / "two").is_symlink()


def test_get_to_dev_null_leaves_it_a_char_device(alice: Cli) -> None:
    before = os.stat("/dev/null")
    try:
        alice.ok("get", "intl", "alice", "k", "-o", "/dev/null")
        after = os.lstat("/dev/null")
        assert stat.S_ISCHR(after.st_mode)
        assert (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)
    finally:
        if not stat.S_ISCHR(os.lstat("/dev/null").st_mode):  # repair what a regression broke
            os.unlink("/dev/null")
            os.mknod("/dev/null", 0o666 | stat.S_IFCHR, before.st_rdev)
            os.chmod("/dev/null", 0o666)


def test_get_to_a_user_made_char_device_writes_into_it(alice: Cli, tmp_path: Path) -> None:
    device = tmp_path / "null"
    os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # root: must not be refused
    alice.ok("get", "intl", "alice", "k", "-o", str(device))
    assert stat.S_ISCHR(device.lstat().st_mode)


# 2. user text is never Rich markup --------------------------------------------------

MARKUP_KEYS = ["x[/]y", "[bold]b", "[bold red]z", "a/[red]c[/red]"]


def test_keys_that_look_like_markup_round_trip_exactly(alice: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    for key in MARKUP_KEYS:
        code, out, err = alice("put", "intl", "alice", key, str(source))
        assert (code, out) == (0, b""), err
        assert err.strip() == f"stored intl/alice/{key} version 1 (8 bytes, 1 segment)"
        assert alice.json("put", "intl", "alice", key, str(source))["key"] == key

    page = alice.json("ls", "intl", "alice")
    assert sorted(item["key"] for item in page["items"]) == sorted([*MARKUP_KEYS, "k"])
    table = alice.ok("ls", "intl", "alice").decode()
    for key in MARKUP_KEYS:
        assert f"│ {key} " in table, table
        assert alice.json("stat", "intl", "alice", key)["key"] == key
        assert f"│ key        │ {key} " in alice.ok("stat", "intl", "alice", key).decode()
        assert f"intl/alice/{key} " in alice.ok("stat", "intl", "alice", key).decode()
        assert alice.json("where", "intl", "alice", key)["key"] == key
        assert f"intl/alice/{key} v2" in alice.ok("where", "intl", "alice", key).decode()
        assert alice.json("rm", "intl", "alice", key, "--version", "2") == {
            "tenant": "intl",
            "subject": "alice",
            "key": key,
            "deleted_versions": 1,
        }
        code, _, err = alice("rm", "intl", "alice", key)
        assert (code, err.strip()) == (0, f"deleted 1 version(s) of intl/alice/{key}")


def test_init_into_a_directory_named_like_markup(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    target = tmp_path / "br[/]x"
    code, _, err = Cli(tmp_path / "unused", capsysbinary)(
        "init", "--demo", str(target), config=False
    )
    assert code == 0, err
    assert f"wrote {target}/shardvault.toml;" in err


# 3. tracebacks that are now one line --------------------------------------------


@pytest.mark.parametrize("option", ["--prefix", "--start-after"])
def test_ls_with_undecodable_bytes_is_exit_2(alice: Cli, option: str) -> None:
    line = alice.fails(2, "ls", "intl", "alice", option, "\udcff")
    assert "not valid UTF-8" in line
    assert ("invalid prefix" in line) == (option == "--prefix")
    assert ("invalid start-after key" in line) == (option == "--start-after")


@pytest.mark.parametrize("command", ["get", "stat", "rm", "where"])
@pytest.mark.parametrize("version", ["0", "-1", str(MAX_VERSION + 1), "99999999999999999999"])
def test_versions_outside_the_catalog_range_are_exit_2(
    alice: Cli, command: str, version: str
) -> None:
    line = alice.fails(2, command, "intl", "alice", "k", "--version", version)
    assert f"version {int(version)} is out of range: versions run from 1 to {MAX_VERSION}" in line


@pytest.mark.parametrize("command", ["get", "stat", "rm", "where"])
def test_the_largest_version_is_looked_up(alice: Cli, command: str) -> None:
    assert "no object" in alice.fails(
        1, command, "intl", "alice", "k", "--version", str(MAX_VERSION)
    )


@pytest.mark.parametrize("target", [".", "/", "sub"])
def test_get_to_a_directory_is_exit_2(alice: Cli, tmp_path: Path, target: str) -> None:
    (tmp_path / "sub").mkdir()
    path = target if target != "sub" else str(tmp_path / "sub")
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", path)
    assert line == f"error: -o {path} is a directory; give a file name"


def test_get_onto_a_read_only_mount_is_one_line(alice: Cli, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as readonly:
        line = alice.fails(2, "get", "intl", "alice", "k", "-o", str(readonly / "out"))
    assert "Read-only file system" in line


def test_get_onto_a_full_disk_is_a_failure_not_bad_input(alice: Cli, tmp_path: Path) -> None:
    # exit 1 (make room, retry), not 2: the path given was fine
    with tmpfs(tmp_path / "full", "size=16k") as full:
        (full / "filler").write_bytes(b"\0" * 16384)
        line = alice.fails(1, "get", "intl", "alice", "k", "-o", str(full / "out"))
        assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no partial file
    assert (
        line == f"error: cannot write {full / 'out'}: No space left on device; make room and retry"
    )


def test_put_with_stdin_closed_is_exit_2(alice: Cli) -> None:
    done = shardvault(
        alice.config, "put", "intl", "alice", "k2", "-", preexec_fn=lambda: os.close(0)
    )
    assert one_error_line(done, 2) == "error: stdin is closed: give a FILE, or pipe the data in"


# help, of the program, a command, a group's command, and shown for no command
HELP = [["--help"], ["ls", "--help"], ["audit", "verify", "--help"], [], ["audit"]]


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "intl", "alice", "k"],
        ["ls", "intl", "alice", "--json"],
        ["ls", "intl", "alice"],
        ["--version"],  # was exit 0, the version lost: click's echo writes nothing there
        *HELP,  # was exit 0 (2 with no command), the help lost: rich writes nothing there
    ],
)
def test_closed_stdout_is_exit_1(alice: Cli, argv: list[str]) -> None:
    done = shardvault(alice.config, *argv, preexec_fn=lambda: os.close(1))
    assert "stdout is closed" in one_error_line(done, 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "intl", "alice", "k", "-o", "a{bad}b"],
        ["put", "intl", "alice", "k", "a{bad}b"],
        ["init", "--demo", "a{bad}b"],
        ["policy", "test", "a{bad}b"],
        ["audit", "export", "--cell", "US", "a{bad}b"],
        ["audit", "head", "--cell", "US", "-o", "a{bad}b"],
        ["receipt", "verify", "a{bad}b", "--key", "k"],
        ["forget", "intl", "alice", "--receipt", "a{bad}b"],
        ["scan", ".", "--policy", "a{bad}b"],
    ],
)
@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone-surrogate"])
def test_an_argument_no_command_line_can_hold_is_exit_2_not_a_traceback(
    alice: Cli, argv: list[str], bad: str
) -> None:
    # main(argv) in one process (a test, an embedding): os.stat raised ValueError
    # ("embedded null byte") or UnicodeEncodeError, and main printed a traceback
    line = alice.fails(2, *(a.format(bad=bad) for a in argv))
    assert "no command line can hold" in line


def test_closed_stderr_keeps_errors_out_of_stdout(alice: Cli) -> None:
    # print(file=None) falls back to stdout: the error line landed in the data
    done = subprocess.run(
        [str(BINARY), "get", "intl", "alice", "missing"],
        env={**os.environ, "SHARDVAULT_CONFIG": str(alice.config)},
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(2),
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, b"")


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "intl", "alice", "k"],
        ["ls", "intl", "alice"],
        ["ls", "intl", "alice", "--json"],
        ["stat", "intl", "alice", "k"],
        ["audit", "keys"],
        ["--version"],
        *HELP,  # said "error: No space left on device", not that stdout could not take it
    ],
)
def test_full_stdout_is_exit_1(alice: Cli, argv: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        done = shardvault(alice.config, *argv, stdout=full)
    assert one_error_line(done, 1) == "error: cannot write to stdout: No space left on device"


@pytest.mark.parametrize("json_out", [[], ["--json"]], ids=["text", "json"])
@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_keygen_whose_public_key_cannot_be_shown_leaves_no_key(
    tmp_path: Path, stdout: str, json_out: list[str]
) -> None:
    # the private key was written, its public key lost with the output: exit 1, and
    # the same command run again refused, the file existing
    key = tmp_path / "dpo.skey"
    argv = ["approval", "keygen", str(key), *json_out]
    if stdout == "closed":
        done = shardvault(tmp_path / "none.toml", *argv, preexec_fn=lambda: os.close(1))
    else:
        with open("/dev/full", "wb") as full:
            done = shardvault(tmp_path / "none.toml", *argv, stdout=full)
    assert done.returncode == 1, done.stderr
    line = done.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("error: ") and line.endswith(f"; {key} was removed: run it again")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("json_out", [[], ["--json"]], ids=["text", "json"])
@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_token_that_cannot_be_shown_is_revoked(
    alice: Cli, stdout: str, json_out: list[str]
) -> None:
    # exit 1, but the token stayed live for 90 days: a credential no one was given
    hint = "; the token was revoked: issue another with 'shardvault principal token svc'"
    for argv in (
        ["principal", "add", "svc", "--tenant", "intl", "--kind", "service", "--location", "US"],
        ["principal", "token", "svc"],
    ):
        if stdout == "closed":
            done = shardvault(alice.config, *argv, *json_out, preexec_fn=lambda: os.close(1))
        else:
            with open("/dev/full", "wb") as full:
                done = shardvault(alice.config, *argv, *json_out, stdout=full)
        assert done.returncode == 1, done.stderr
        line = done.stderr.decode().strip().splitlines()[-1]
        assert line.startswith("error: ") and line.endswith(hint), line
        (svc,) = [p for p in alice.json("principal", "ls") if p["id"] == "svc"]
        assert svc["active_tokens"] == 0


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["PYTHONUNBUFFERED", "buffered"])
@pytest.mark.parametrize("what", ["bytes", "text"])
def test_stdout_onto_a_disk_that_fills_midway_is_exit_1(
    alice: Cli, tmp_path: Path, unbuffered: str, what: str
) -> None:
    # with PYTHONUNBUFFERED (as many container images set), stdout is an unbuffered
    # file, whose write stops short when the disk fills: what did not fit was dropped
    # and `get > file` exited 0, leaving a truncated file
    source = tmp_path / "big.py"
    source.write_text("".join(f'u{n} = "http://8.8.{n % 250}.{n // 250}/"\n' for n in range(2000)))
    alice.ok("put", "intl", "alice", "big", str(source))
    if what == "bytes":
        argv = ["get", "intl", "alice", "big"]
    else:  # a report of 2,000 findings, as one text
        argv = ["scan", str(source), "--format", "json", "--fail-on", "high"]
    with tmpfs(tmp_path / "small", "size=32k") as small, open(small / "out", "wb") as out:
        env = {**os.environ, "SHARDVAULT_CONFIG": str(alice.config), "PYTHONUNBUFFERED": unbuffered}
        done = subprocess.run(
            [str(BINARY), *argv], stdout=out, stderr=subprocess.PIPE, env=env, timeout=60
        )
    assert one_error_line(done, 1) == "error: cannot write to stdout: No space left on device"


# 3 and 4. init: refuses to overwrite and leaves nothing half-made --------------


def init(capsys: pytest.CaptureFixture[bytes], tmp_path: Path, target: str) -> tuple[int, str]:
    code, _, err = Cli(tmp_path / "unused", capsys)("init", "--demo", target, config=False)
    assert "Traceback" not in err
    return code, err


def test_init_onto_a_file_or_empty_dir_is_exit_2(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    existing = tmp_path / "f.txt"
    existing.write_text("mine")
    assert init(capsysbinary, tmp_path, str(existing)) == (
        2,
        f"error: {existing} exists and is not a directory: choose a directory\n",
    )
    assert existing.read_text() == "mine"
    here = Path.cwd()
    before = sorted(here.iterdir())
    code, err = init(capsysbinary, tmp_path, "")
    assert (code, err.startswith("error: --demo needs a directory")) == (2, True)
    assert sorted(here.iterdir()) == before


@pytest.mark.parametrize("existing", ["policy.toml", "partner/custodian-policy.toml"])
def test_init_refuses_to_overwrite_any_file_it_would_write(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], existing: str
) -> None:
    target = tmp_path / "demo"
    (target / "partner").mkdir(parents=True)
    (target / existing).write_text("# mine\n")
    code, err = init(capsysbinary, tmp_path, str(target))
    assert (code, err) == (
        2,
        f"error: {target / existing} already exists: choose an empty directory\n",
    )
    assert (target / existing).read_text() == "# mine\n"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["partner", existing]


def test_a_failed_init_removes_what_it_made(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    (target / "partner").write_text("a file where the partner's directory goes")
    code, err = init(capsysbinary, tmp_path, str(target))
    assert (code, err.startswith(f"error: cannot write the demo deployment in {target}")) == (
        2,
        True,
    )
    assert [p.name for p in target.iterdir()] == ["partner"]
    (target / "partner").unlink()
    assert init(capsysbinary, tmp_path, str(target))[0] == 0


def test_init_where_no_directory_can_be_made_says_why(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # /proc/x said "No such file or directory", of a /proc that is there
    (tmp_path / "f").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "nodes").write_text("a file where a directory goes")
    cannot = "error: cannot write the demo deployment in"
    for target, why in [
        ("/proc/x", "cannot create /proc/x: /proc takes no new files (No such file or directory)"),
        ("/sys/x", "cannot create /sys/x: Operation not permitted"),
        (f"{tmp_path}/f/sub", f"cannot create {tmp_path}/f/sub: {tmp_path}/f is not a directory"),
        (f"{tmp_path}/link", f"cannot create {tmp_path}/link: it is a symbolic link to "
                             f"{tmp_path}/gone, which does not exist"),
        (f"{tmp_path}/d", f"cannot create {tmp_path}/d/nodes/US: {tmp_path}/d/nodes is not "
                          "a directory"),
    ]:  # fmt: skip
        assert init(capsysbinary, tmp_path, target) == (2, f"{cannot} {target}: {why}\n")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["nodes"]


@pytest.mark.parametrize(
    "left",
    [
        "state",
        "keys",
        "nodes",
        "partner/witness.skey",
        "partner/custodian.skey",
        "approvers/cfo.skey",
    ],
)
def test_init_over_what_a_deployment_left_is_refused(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], left: str
) -> None:
    # with its config and policies gone, a new demo reopened the old catalogs, keyring
    # and shards under fresh policies
    target = tmp_path / "demo"
    (target / left).parent.mkdir(parents=True, exist_ok=True)
    (target / left).mkdir() if "." not in left else (target / left).write_text("old")
    code, err = init(capsysbinary, tmp_path, str(target))
    shown = target / left.split("/")[0]
    assert (code, err) == (
        2,
        f"error: {shown} is left from a deployment: choose an empty directory, or move it away\n",
    )


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_init_writes_nothing_through_what_is_at_a_temporary_name(tmp_path: Path, kind: str) -> None:
    # each file was written to a fixed temporary name, .NAME.tmp, opened as it was: a
    # FIFO there made init wait for a writer for ever; a symbolic link there had the
    # config written into the file it names, outside DIR, and renamed in as the config
    target = tmp_path / "demo"
    target.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine")
    for name in (".shardvault.toml.tmp", ".policy.toml.tmp"):
        os.mkfifo(target / name) if kind == "fifo" else (target / name).symlink_to(victim)
    done = shardvault(tmp_path / "unused.toml", "init", "--demo", str(target), timeout=20)
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "mine"
    for name in ("shardvault.toml", "policy.toml", "partner/custodian-policy.toml"):
        assert (target / name).is_file() and not (target / name).is_symlink()


@pytest.mark.parametrize("options", ["size=32k", "ro,size=1m"])
def test_init_on_a_full_or_read_only_disk_leaves_nothing(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], options: str
) -> None:
    with tmpfs(tmp_path / "disk", options) as disk:
        if "ro" not in options:
            (disk / "filler").write_bytes(b"\0" * 28672)  # one page left: the demo needs 5
        before = sorted(disk.rglob("*"))
        for target in (disk / "demo", disk):
            code, err = init(capsysbinary, tmp_path, str(target))
            expected = 2 if "ro" in options else 1  # a full disk is a failure, not bad input
            assert code == expected and err.startswith("error: cannot write the demo deployment")
            assert err.count("\n") == 1
            assert sorted(disk.rglob("*")) == before
        if "ro" not in options:
            (disk / "filler").unlink()
            assert init(capsysbinary, tmp_path, str(disk / "demo"))[0] == 0


# 5. a named FIFO or a device as an input is refused at once; a pipe is read ------

POLICY_DIR = Path(__file__).resolve().parents[1] / "policy"

FIFO_INPUTS = {
    "policy test FILE": ["policy", "test", "{fifo}"],
    "policy test --policy": ["policy", "test", "{cases}", "--policy", "{fifo}"],
    "policy check --policy": [
        "policy", "check", "--principal", "x", "--kind", "employee", "--location", "US",
        "--action", "read", "--tenant", "intl", "--jurisdiction", "US", "--purpose", "p",
        "--policy", "{fifo}",
    ],
    "scan PATH": ["scan", "{fifo}"],
    "scan --policy": ["scan", "{source}", "--policy", "{fifo}"],
    "scan --baseline": ["scan", "{source}", "--baseline", "{fifo}"],
    "receipt verify FILE": ["receipt", "verify", "{fifo}", "--key", "k"],
    "audit verify EXPORT": ["audit", "verify", "{fifo}", "--key", "k"],
    "audit verify --head": ["audit", "verify", "{source}", "--key", "k", "--head", "{fifo}"],
    "--config": ["--config", "{fifo}", "nodes"],
    "put FILE": ["put", "intl", "alice", "k2", "{fifo}"],
}  # fmt: skip


def no_wait(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The command in its own process, which must end by itself: a FIFO nobody writes
    to blocked the open for ever, silently."""
    try:
        return shardvault(config, *args, stdin=b"", timeout=20, stdout=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} waited on a FIFO nobody writes to")


@pytest.mark.parametrize("argv", FIFO_INPUTS.values(), ids=FIFO_INPUTS.keys())
def test_a_named_fifo_as_an_input_is_refused_without_waiting(
    alice: Cli, tmp_path: Path, argv: list[str]
) -> None:
    fifo, source = tmp_path / "fifo", tmp_path / "a.py"
    os.mkfifo(fifo)
    source.write_text("x = 1\n")
    args = [a.format(fifo=fifo, source=source, cases=POLICY_DIR / "cases.toml") for a in argv]
    line = one_error_line(no_wait(alice.config, *args), 2)
    refusals = ("named FIFO", "not a regular file", "neither an export directory nor a tar file")
    assert str(fifo) in line and any(refusal in line for refusal in refusals), line


@pytest.mark.parametrize(
    "argv", [["policy", "test", "/dev/tty"], ["receipt", "verify", "/dev/zero", "--key", "k"]]
)
def test_a_device_as_an_input_is_refused_without_reading_it(alice: Cli, argv: list[str]) -> None:
    # /dev/tty waited for someone to type; /dev/zero was read up to the bound
    line = one_error_line(no_wait(alice.config, *argv), 2)
    assert line == f"error: cannot read {argv[2]}: not a regular file"


def test_a_fifo_deployment_policy_is_refused_without_waiting(alice: Cli) -> None:
    custodian = alice.config.parent / "partner" / "custodian-policy.toml"
    custodian.unlink()
    os.mkfifo(custodian)
    line = one_error_line(no_wait(alice.config, "ls", "intl", "alice"), 2)
    assert str(custodian) in line and "named FIFO" in line


OWN_FILES = {
    "directory key": ("state/directory.key", ["ls", "intl", "alice"]),
    "audit hmac key": ("state/cells/US/audit/hmac.key", ["ls", "intl", "alice"]),
    "cell signing key": ("state/cells/US/audit/cell.skey", ["audit", "head", "--cell", "US"]),
    "witness key": ("partner/witness.skey", ["audit", "head", "--cell", "US"]),
    "custodian key": ("partner/custodian.skey", ["audit", "keys"]),
    "partner's last head": ("partner/cosigned/US.note", ["audit", "head", "--cell", "US"]),
    "stored head": (
        "state/cells/US/audit/log/heads/00000000000000000002.note",
        ["audit", "prove-consistency", "1", "2", "--cell", "US"],
    ),
    "node marker": ("nodes/US/us-n1/NODE", ["get", "intl", "alice", "k"]),
}


@pytest.mark.parametrize("name", OWN_FILES.keys())
def test_a_fifo_in_place_of_a_deployment_file_is_damage_not_a_hang(alice: Cli, name: str) -> None:
    # a FIFO in place of state/directory.key made `ls` wait for a writer, for ever
    alice.ok("audit", "head", "--cell", "US")
    relative, argv = OWN_FILES[name]
    path = alice.config.parent / relative
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)  # a key's mode: one readable by others is refused for that first
    line = one_error_line(no_wait(alice.config, *argv), 1)
    assert f"{path} is a named FIFO, not a regular file" in line, line


def test_a_fifo_in_place_of_a_compaction_journal_skips_its_node(alice: Cli) -> None:
    journal = alice.config.parent / "nodes/US/us-n1/packs/compact.journal"
    os.mkfifo(journal)
    done = no_wait(alice.config, "gc")
    assert done.returncode == 1, done.stderr  # an active node skipped: work left undone
    said = done.stderr.decode()
    assert "warning: node us-n1 failed during the sweep, which stopped part-way: " in said
    assert f"{journal} is a named FIFO, not a regular file" in said
    assert "unavailable" not in said  # it was opened: its sweep failed


def test_a_fifo_in_place_of_the_audit_frontier_is_rebuilt(alice: Cli) -> None:
    frontier = alice.config.parent / "state/cells/US/audit/log/frontier"
    frontier.unlink()
    os.mkfifo(frontier)
    done = no_wait(alice.config, "ls", "intl", "alice")
    assert done.returncode == 0, done.stderr
    assert b"k" in done.stdout


def test_a_fifo_gitignore_ignores_nothing_and_does_not_block_the_scan(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.py").write_text('URL = "http://203.0.113.7/"\n')
    os.mkfifo(tree / ".gitignore")
    done = no_wait(tmp_path / "none.toml", "scan", str(tree), "--format", "json")
    assert done.returncode in (0, 1), done.stderr
    assert json.loads(done.stdout)["summary"]["files"] == 1


def test_a_pipe_a_shell_opens_is_read_as_a_file(alice: Cli, tmp_path: Path) -> None:
    # <(cmd) and /dev/stdin of a pipe are pipes too, which end when their writer does
    policy, cases = POLICY_DIR / "policy.toml", POLICY_DIR / "cases.toml"
    for script in (
        f'"$SV" policy test <(cat {cases}) --policy <(cat {policy})',
        f'cat {cases} | "$SV" policy test /dev/stdin --policy {policy}',
    ):
        done = subprocess.run(
            ["bash", "-c", script], env={**os.environ, "SV": str(BINARY)},
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert b"all " in done.stderr and b"passed" in done.stderr


# put refuses what is not a regular file or a pipe without opening it


def test_put_from_a_pipe_the_shell_opened_streams_it(alice: Cli) -> None:
    # put K <(cmd) gives /dev/fd/63, a pipe: refused as "not a regular file"
    env = {**os.environ, "SHARDVAULT_CONFIG": str(alice.config), "SV": str(BINARY)}
    script = '"$SV" put intl alice k2 <(printf from-a-pipe) && "$SV" get intl alice k2'
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"from-a-pipe"), done.stderr


def test_put_from_a_fifo_is_refused_without_blocking(alice: Cli, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = shardvault(alice.config, "put", "intl", "alice", "k2", str(fifo))
    assert one_error_line(done, 2) == (
        f"error: cannot read {fifo}: a named FIFO, which waits for a writer: give a file, "
        f"or a pipe (<(cat {fifo}))"
    )
    line = alice.fails(2, "put", "intl", "alice", "k2", "/dev/zero")
    assert line == "error: cannot read /dev/zero: not a regular file"


# 6. Ctrl-C ----------------------------------------------------------------------


def test_interrupted_put_says_so_and_exits_130(alice: Cli) -> None:
    env = {**os.environ, "SHARDVAULT_CONFIG": str(alice.config)}
    process = subprocess.Popen(
        [str(BINARY), "put", "intl", "alice", "stream", "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # a shell starting a job in the background (`.ci/run &`) makes its children
        # ignore SIGINT, and Python then installs no handler: give the child Ctrl-C back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdin is not None
    process.stdin.write(os.urandom(1 << 20))  # the command is now reading a stream that goes on
    process.stdin.flush()
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err.decode()) == (130, "error: interrupted\n")
    listing = json.loads(
        shardvault(alice.config, "ls", "intl", "alice", "--json", stdout=subprocess.PIPE).stdout
    )
    assert [item["key"] for item in listing["items"]] == ["k"]


# a broken node -------------------------------------------------------------------


def test_a_broken_node_is_shown_and_read_around(alice: Cli, tmp_path: Path) -> None:
    node = tmp_path / "demo" / "nodes" / "SG" / "sg-n1"
    for child in sorted(node.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    node.rmdir()
    node.write_text("")  # the node's directory is now a file
    assert alice.ok("get", "intl", "alice", "k") == b"payload\n"  # a US object: untouched
    code, out, err = alice("nodes", "--json")  # exit 1: an active node is unreachable
    by_id = {n["id"]: n for n in json.loads(out)["nodes"]}
    assert by_id["sg-n1"]["unavailable"] == f"opening {node} failed: Not a directory"
    assert by_id["sg-n2"]["unavailable"] is None
    assert code == 1 and f"warning: node sg-n1 is unavailable: opening {node} failed" in err
    code, out, err = alice("nodes")
    assert code == 1 and b"unavailable" in out
    assert f"warning: node sg-n1 is unavailable: opening {node} failed" in err
    code, out, err = alice("gc", "--grace", "0", "--json")
    assert code == 1 and "warning: skipped unavailable node(s) sg-n1:" in err
    report = json.loads(out)
    assert (report["unavailable_nodes"], report["failed_nodes"]) == (["sg-n1"], [])


@pytest.mark.parametrize("char", ["\u2215", "\uff0f", "\u2044", "\u29f8", "\u2571", "\uff3c"])
def test_put_of_a_key_with_a_look_alike_slash_is_one_line_and_exit_2(
    alice: Cli, tmp_path: Path, char: str
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"x")
    line = alice.fails(2, "put", "intl", "alice", f"photos{char}2024", str(source))
    name = unicodedata.name(char)
    assert f"character 7 is U+{ord(char):04X} {name}, which looks like" in line
    assert line.endswith("use '/' to separate path segments")
    assert b"photos" not in alice.ok("ls", "intl", "alice")


def test_put_of_a_key_with_a_segment_of_fullwidth_dots_is_one_line_and_exit_2(
    alice: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"x")
    line = alice.fails(2, "put", "intl", "alice", "photos/\uff0e\uff0e/x", str(source))
    assert line == (
        "error: invalid object key 'photos/\\uff0e\\uff0e/x': path segment 2, "
        "'\\uff0e\\uff0e', looks like '..', which no path segment may be: give it a "
        "name, not dots"
    )
    assert b"photos" not in alice.ok("ls", "intl", "alice")


def test_a_subject_id_of_letters_not_ascii_is_refused_saying_ascii(alice: Cli) -> None:
    """'josé' was refused with "1-128 characters of letters, digits ...": é is a
    letter, so the line contradicted itself. It says ASCII letters now; 128 of them
    are an id, 129 are not."""
    line = alice.fails(2, "subject", "add", "intl", "jos\u00e9", "--jurisdiction", "US")
    assert line == (
        "error: invalid subject id 'jos\u00e9': 1-128 ASCII letters, digits and "
        ". _ @ + - (not first)"
    )
    alice.ok("subject", "add", "intl", "a" * 128, "--jurisdiction", "US")
    line = alice.fails(2, "subject", "add", "intl", "a" * 129, "--jurisdiction", "US")
    assert "(129 characters): 1-128 ASCII letters" in line


@pytest.mark.parametrize(
    ("old", "new", "key", "also"),
    [
        (
            'path = "keys/keyring.json"',
            'path = "policy.toml"',
            "custodian.path",
            "governance.policy",
        ),
        ('path = "keys/keyring.json"', 'path = "shardvault.toml"', "custodian.path", "the config"),
        (
            'custodian_policy = "partner/custodian-policy.toml"',
            'custodian_policy = "policy.toml"',
            "governance.custodian_policy",
            "governance.policy",
        ),
    ],
    ids=["keyring-is-the-policy", "keyring-is-the-config", "both-policies-one-file"],
)
def test_a_config_naming_one_file_for_two_of_its_files_is_exit_2_writing_nothing(
    tmp_path: Path, old: str, new: str, key: str, also: str
) -> None:
    """`custodian.path = "policy.toml"` loaded: `nodes` made the state directory, said
    to chmod 600 the policy, and then that the keyring was damaged, to be restored from
    a backup. A config whose keyring, policies and itself are not four files is bad
    input, one line naming the key, and nothing is made."""
    demo = tmp_path / "demo"
    assert shardvault(demo / "shardvault.toml", "init", "--demo", str(demo)).returncode == 0
    toml = demo / "shardvault.toml"
    toml.write_text(toml.read_text().replace(old, new, 1))
    before = sorted(p.name for p in demo.iterdir())
    line = one_error_line(shardvault(toml, "nodes"), 2)
    assert f": {key}: " in line and line.endswith(f" is {also} too: give each its own file")
    assert sorted(p.name for p in demo.iterdir()) == before  # no state directory made


LEADING_MARK_KEYS = {  # where the mark is, and the mark: one of each kind of category M
    "key-start-acute": ("\u0301cat", 1),
    "segment-start-acute": ("photos/\u0301cat", 8),
    "segment-start-devanagari-sign": ("photos/2024/\u093fx", 13),
    "segment-start-enclosing-circle": ("a/\u20ddb", 3),
}


@pytest.mark.parametrize(
    ("key", "position"), LEADING_MARK_KEYS.values(), ids=LEADING_MARK_KEYS.keys()
)
def test_put_of_a_key_whose_segment_starts_with_a_mark_is_one_line_and_exit_2(
    alice: Cli, tmp_path: Path, key: str, position: int
) -> None:
    """A combining mark has nothing of its own to sit on at the start of a segment:
    'photos/\u0301cat' lists as 'photos/́cat', the accent drawn on the '/' (or, at the
    key's start, on what a listing prints before it). Such a key was stored; it is
    refused as a new key, naming the mark and where it is, and nothing is stored."""
    source = tmp_path / "in.txt"
    source.write_bytes(b"x")
    line = alice.fails(2, "put", "intl", "alice", key, str(source))
    char = key[position - 1]
    assert f"character {position} is U+{ord(char):04X} {unicodedata.name(char)}" in line
    assert line.endswith("start each path segment with a letter, digit or sign")
    listed = json.loads(alice.ok("ls", "intl", "alice", "--json"))
    assert [item["key"] for item in listed["items"]] == ["k"]


def test_gc_leaves_a_directory_named_like_a_shard_alone_names_it_and_sweeps_the_node(
    alice: Cli, tmp_path: Path
) -> None:
    """A directory with a shard's name under a node's shards/ (an operator's mkdir, a
    restore tool's) made every gc skip the node, "unavailable", exit 1: its delete as an
    orphan failed. gc leaves it alone, names it once, and sweeps the rest of the node."""
    node = tmp_path / "demo" / "nodes" / "US" / "us-n1"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(300_000))  # shards of files of their own, under shards/
    alice.ok("put", "intl", "alice", "big", str(big))
    alice.ok("rm", "intl", "alice", "big")
    stray = node / "shards" / "ab" / "cd" / ("abcd" + "0" * 28 + ".v1.s0")
    stray.mkdir(parents=True)
    assert [p for p in (node / "shards").rglob("*.v1.s*") if p.is_file()]  # the big's shard
    code, out, err = alice("gc", "--grace", "0", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["skipped_nodes"] == [] and report["strays"] == [str(stray)]
    assert report["shards"] == 6  # the deleted version's, us-n1's among them
    assert [p for p in (node / "shards").rglob("*.v1.s*") if p.is_file()] == []
    assert err.count("warning:") == 1 and f"warning: left alone {stray}: not a file" in err
    assert stray.is_dir() and alice.ok("get", "intl", "alice", "k") == b"payload\n"


def test_gc_tells_a_node_that_failed_during_the_sweep_from_one_unavailable(
    alice: Cli, tmp_path: Path
) -> None:
    """A node that was opened but failed part-way through its sweep was reported as
    "skipped unavailable": it is named as failed, with the error, in text and --json."""
    journal = tmp_path / "demo" / "nodes" / "US" / "us-n2" / "packs" / "compact.journal"
    journal.mkdir()  # compaction fails closed on a journal it cannot read
    code, out, err = alice("gc", "--grace", "0", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["skipped_nodes"] == ["us-n2"] and report["unavailable_nodes"] == []
    (failed,) = report["failed_nodes"]
    assert failed["node"] == "us-n2" and "compaction journal" in failed["error"]
    assert "unavailable" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("warning: node us-n2 failed during the sweep, which stopped part-way: ")
    assert failed["error"] in line
    code, _, err = alice("gc", "--grace", "0")
    assert code == 1 and "warning: node us-n2 failed during the sweep" in err


def test_a_node_whose_strays_cannot_be_listed_keeps_its_sweep_and_is_named_once(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure listing a node's strays names the node as failed, and a store's error
    that names the node is not prefixed with it twice."""
    alice.ok("rm", "intl", "alice", "k")
    listed = LocalDirShardStore.strays

    def failing(store: LocalDirShardStore) -> list[str]:
        if store.node_id == "us-n2":
            raise StorageError("node us-n2: listing its strays failed: Input/output error")
        return listed(store)

    monkeypatch.setattr(LocalDirShardStore, "strays", failing)
    code, out, err = alice("gc", "--grace", "0", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert [failed["node"] for failed in report["failed_nodes"]] == ["us-n2"]
    assert report["versions"] == 1 and report["shards"] == 6  # the rest of gc done
    (line,) = err.strip().splitlines()
    assert line.count("us-n2") == 1, line
    assert "listing its strays failed: Input/output error" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "intl", "alice", "k", "-o", "{long}"],
        ["audit", "export", "--cell", "US", "{long}"],
        ["audit", "head", "--cell", "US", "-o", "{long}"],
        ["init", "--demo", "{long}"],
        ["put", "intl", "alice", "k", "{long}"],
        ["--config", "{long}", "nodes"],
        ["scan", ".", "--policy", "{long}"],
        ["scan", ".", "--baseline", "{long}"],
        ["policy", "test", "{long}"],
        ["policy", "test", "{cases}", "--policy", "{long}"],
        ["scan", "{long}"],
        ["scan", ".", "--write-baseline", "{long}"],
        ["approval", "approve", "apr-us-0", "--signing-key", "{long}"],
    ],
    ids=["get", "audit-export", "audit-head", "init", "put", "config", "scan-policy",
         "scan-baseline", "policy-test", "policy-test-policy", "scan-path", "scan-write",
         "signing-key"],
)  # fmt: skip
def test_a_path_too_long_is_one_line_and_exit_2(
    alice: Cli, tmp_path: Path, argv: list[str]
) -> None:
    # ENAMETOOLONG escaped these commands as a 36-line traceback; then the path came back
    # whole in the line (a 5,000-character one, 5,000 characters of error); then it said
    # "File name too long: '...'" and nothing to do (put's FILE, scan's and policy's
    # files, in their own "cannot read FILE: ..." line, until later)
    long = str(tmp_path / ("n" * 300 + "/" + "n" * 5000))
    cases = str(Path(__file__).parents[1] / "policy" / "cases.toml")
    line = alice.fails(2, *[a.replace("{long}", long).replace("{cases}", cases) for a in argv])
    assert len(line) < 400, line
    assert re.search(r"a name in it is (300|5000) bytes", line), line
    assert line.endswith("more than the 255 a file system allows: give a shorter path")


def test_a_newer_config_at_a_long_path_is_named_short(alice: Cli, tmp_path: Path) -> None:
    # the config's newer-version line repeated its path whole, as no other config error did
    deep = tmp_path.joinpath(*["d" * 200] * 14)
    deep.mkdir(parents=True)
    (deep / "shardvault.toml").write_text("version = 2\n")
    line = alice.fails(1, "--config", str(deep / "shardvault.toml"), "nodes")
    assert line.endswith("upgrade shardvault") and len(line) < 400


def test_a_source_that_fails_to_read_is_one_line_and_stores_nothing(alice: Cli) -> None:
    # reading /proc/self/mem fails with EIO: it escaped put as a traceback
    line = alice.fails(2, "put", "intl", "alice", "unreadable", "/proc/self/mem")
    assert line == "error: cannot read /proc/self/mem: Input/output error; nothing was stored"
    alice.fails(1, "stat", "intl", "alice", "unreadable")


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (
            ["--token", ""],
            None,
            "error: --token is empty: pass a principal's token, or leave it out to act as "
            "the local administrator",
        ),
        (
            ["--as", ""],
            None,
            "error: --as is empty: name the principal whose token is given, or leave it out",
        ),
        ([], "", "error: SHARDVAULT_TOKEN is set but empty: set it to a token, or unset it"),
        # the command's default purpose was used instead, and recorded in the audit log
        (["--purpose", ""], None, "error: --purpose is empty"),
    ],
    ids=["token", "as", "env", "purpose"],
)
def test_an_empty_credential_is_refused_not_read_as_none(
    alice: Cli, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: str | None, said: str
) -> None:
    # a script whose token variable came out empty acted, silently, as the administrator
    if env is not None:
        monkeypatch.setenv("SHARDVAULT_TOKEN", env)
    line = alice.fails(2, *argv, "ls", "intl", "alice")
    assert line.startswith(said)


@pytest.mark.parametrize("if_match", ["-1", "9223372036854775808"])
def test_an_if_match_outside_the_version_range_is_exit_2(
    alice: Cli, tmp_path: Path, if_match: str
) -> None:
    # it was exit 1, "expected version -1, current is 1": a refusal, not bad input
    source = tmp_path / "new.txt"
    source.write_bytes(b"new\n")
    line = alice.fails(2, "put", "intl", "alice", "k", str(source), "--if-match", if_match)
    assert line.startswith(f"error: version {if_match} is out of range")


@pytest.mark.parametrize(
    ("name", "damage", "argv"),
    [
        ("cells/US/audit/hmac.key", b"short", ["get", "intl", "alice", "k"]),
        ("keyring.json", b"{not json", ["get", "intl", "alice", "k"]),
        ("keyring.json", b'{"format": "other"}', ["get", "intl", "alice", "k"]),
        ("cells/US/audit/cell.skey", b"PRIVATE+KEY+garbage", ["audit", "head", "--cell", "US"]),
        ("cells/US/catalog.sqlite", b"not a database" * 300, ["get", "intl", "alice", "k"]),
    ],
)
def test_a_damaged_file_of_the_deployment_is_exit_1_and_names_it(
    alice: Cli, name: str, damage: bytes, argv: list[str]
) -> None:
    # the key files were exit 2, as for a mistake in the command, and the catalog was
    # a storage failure: damage is a failure to act on, by restoring a backup
    alice.ok("audit", "head", "--cell", "US")  # every key file exists by now
    (path,) = [p for p in alice.config.parent.rglob(Path(name).name) if p.match(name)]
    path.write_bytes(damage)
    line = alice.fails(1, *argv)
    assert str(path) in line and "damaged" in line and "backup" in line


def _user_version(path: Path, version: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version={version}")
        db.commit()


def _keyring_version(path: Path, version: int) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": version}))


def _audit_log_version(path: Path, version: int) -> None:
    with path.open("r+b") as log:
        log.seek(6)  # after the magic: a big-endian u16
        log.write(version.to_bytes(2, "big"))


NEWER = {
    "catalog": ("cells/US/catalog.sqlite", _user_version, 99, ["ls", "intl", "alice"]),
    "directory": ("directory.sqlite", _user_version, 3, ["ls", "intl", "alice"]),
    "principals": ("governance.sqlite", _user_version, 3, ["principal", "ls"]),
    "tombstones": ("keyring.destroyed.sqlite", _user_version, tombstones.SCHEMA_VERSION + 1,
                   ["get", "intl", "alice", "k"]),
    "keyring": ("keyring.json", _keyring_version, 3, ["get", "intl", "alice", "k"]),
    "audit log": ("cells/US/audit/log/entries.log", _audit_log_version, 2,
                  ["audit", "head", "--cell", "US"]),
}  # fmt: skip


@pytest.mark.parametrize(("name", "newer", "version", "argv"), NEWER.values(), ids=NEWER.keys())
def test_a_file_of_a_newer_shardvault_is_exit_1_and_says_upgrade(
    alice: Cli, name: str, newer: Any, version: int, argv: list[str]
) -> None:
    # exit 2, as for a mistake in the command, where damage to the same files is exit 1:
    # the command is right, and what to do is upgrade shardvault (the audit log's was
    # "damaged", exit 1, and named no remedy)
    alice.ok("audit", "head", "--cell", "US")  # every file exists by now
    (path,) = [p for p in alice.config.parent.rglob(Path(name).name) if p.match(name)]
    newer(path, version)
    line = alice.fails(1, *argv)
    assert str(path) in line and "upgrade shardvault" in line, line


# 7. get -o as a shell redirection would, atomically (cli/outfile.py) ------------

SRC = Path(outfile.__file__).parents[2]


def sh(cli: Cli, script: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SHARDVAULT_CONFIG": str(cli.config), "SV": str(BINARY)}
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, timeout=60, check=False
    )


def test_stdout_a_shell_appends_to_is_written_into_not_replaced(alice: Cli, tmp_path: Path) -> None:
    # realpath led to the log file, which was replaced by the object alone
    log = tmp_path / "log"
    done = sh(
        alice,
        f'echo head > {log}; "$SV" get intl alice k -o /dev/stdout >> {log}; echo tail >> {log}',
    )
    assert done.returncode == 0, done.stderr
    assert log.read_bytes() == b"head\npayload\ntail\n"


def test_stdout_a_pipe_and_the_file_stdout_writes_are_written_into(
    alice: Cli, tmp_path: Path
) -> None:
    piped = sh(alice, '"$SV" get intl alice k -o /dev/stdout | cat')
    assert (piped.returncode, piped.stdout) == (0, b"payload\n"), piped.stderr
    out = tmp_path / "out"
    same = sh(alice, f'{{ echo head; "$SV" get intl alice k -o {out}; }} > {out}')
    assert same.returncode == 0, same.stderr
    assert out.read_bytes() == b"head\npayload\n"


def test_a_descriptor_not_open_is_exit_2(alice: Cli) -> None:
    # the CLI runs in this process: a fixed number (97 was) may be open here after other
    # tests, and the get would write into it; the highest the limit allows never is, as
    # the lowest free descriptor is always the one given
    fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
    with pytest.raises(OSError):
        os.fstat(fd)
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", f"/dev/fd/{fd}")
    assert line == f"error: cannot write /dev/fd/{fd}: Bad file descriptor"


def test_a_file_named_with_a_trailing_slash_is_a_directory_and_kept(
    alice: Cli, tmp_path: Path
) -> None:
    # the option's type dropped the slash, and the file NAME was replaced
    name = tmp_path / "name"
    name.write_bytes(b"old")
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", f"{name}/")
    assert line.endswith("is a directory; give a file name")
    assert name.read_bytes() == b"old"


def test_a_link_through_a_missing_directory_is_refused_as_open_would(
    alice: Cli, tmp_path: Path
) -> None:
    # "nodir/../victim" was resolved as text, and victim replaced
    victim = tmp_path / "victim"
    victim.write_bytes(b"old")
    (tmp_path / "link").symlink_to("nodir/../victim")
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", str(tmp_path / "link"))
    assert line.endswith(": No such file or directory")
    assert victim.read_bytes() == b"old"


@pytest.mark.parametrize("name", ["\xe9" * 127, "a" * 255], ids=["254-byte-utf8", "255-ascii"])
def test_get_into_a_file_with_the_longest_name_there_is(
    alice: Cli, tmp_path: Path, name: str
) -> None:
    # the temporary beside it kept the name's first 200 characters, not bytes: 254
    # bytes of "é" made a 271-byte temporary name, and -o failed ("File name too long")
    target = tmp_path / name
    for existing in (False, True):
        alice.ok("get", "intl", "alice", "k", "-o", str(target))
        assert target.read_bytes() == b"payload\n", existing
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_a_read_only_directory_is_named_before_anything_is_read(alice: Cli, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        line = alice.fails(2, "get", "intl", "alice", "k", "-o", str(mount / "out"))
    assert (
        line
        == f"error: cannot write {mount / 'out'} (its directory {mount}): Read-only file system"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may open /proc/version to write")
def test_a_directory_that_takes_no_new_file_is_named_before_anything_is_read(alice: Cli) -> None:
    # root may open /proc/version to write, but /proc makes no file: the temporary the
    # rename needs failed after the read was audited, as "No such file or directory"
    log = alice.config.parent / "state" / "cells" / "US" / "audit" / "log" / "entries.log"
    before = log.read_bytes()
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", "/proc/version")
    assert line == (
        "error: cannot write /proc/version: its directory /proc takes no new file, and -o "
        "writes one beside it to rename over it (redirect stdout to write into the file)"
    )
    assert log.read_bytes() == before


def test_set_id_bits_and_a_replaced_files_privacy_are_kept(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the chown after the chmod cleared set-id bits; the temporary was 0644 until then
    target = tmp_path / "tool"
    target.write_bytes(b"old")
    target.chmod(0o6755)
    created: list[int] = []
    real_open = os.open

    def recorded(path: object, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        if ".partial-" in str(path):
            created.append(mode)
        return real_open(path, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recorded)
    alice.ok("get", "intl", "alice", "k", "-o", str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o6755
    # the check's trial temporary, made and removed empty, then the one written
    assert created == [0o600, 0o600], "made private, then given the file's mode"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory another user (uid 1234, not in group 3000) may use."""
    directory = Path(tempfile.mkdtemp(prefix="outfile-", dir="/tmp"))
    directory.chmod(0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def as_user(script: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; sys.path.insert(0, {str(SRC)!r})\n" + textwrap.dedent(script)
    return subprocess.run(
        ["setpriv", "--reuid=1234", "--regid=1234", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


WRITE = """
from pathlib import Path
from shardvault.cli.outfile import checked_output, write_output
from shardvault.errors import InvalidInput
try:
    write_output(checked_output({path!r}), [b"new"], lambda n: None)
except InvalidInput as exc:
    print("refused:", exc)
"""


def test_another_users_file_is_refused_not_taken(shared: Path) -> None:
    # replacing it made it this user's: its owner locked out
    theirs = shared / "theirs"
    theirs.write_bytes(b"old")
    theirs.chmod(0o666)
    done = as_user(WRITE.format(path=str(theirs)))
    assert "refused: cannot write" in done.stdout and "belongs to another user" in done.stdout
    assert (theirs.read_bytes(), theirs.stat().st_uid) == (b"old", 0)


def test_a_group_this_user_cannot_give_loses_its_permissions(shared: Path) -> None:
    # the mode was kept on this user's own group: its members could read the file
    mine = shared / "mine"
    mine.write_bytes(b"old")
    os.chown(mine, 1234, 3000)
    mine.chmod(0o640)
    done = as_user(WRITE.format(path=str(mine)))
    assert done.returncode == 0 and not done.stdout, done.stdout + done.stderr
    after = mine.stat()
    assert mine.read_bytes() == b"new"
    assert (after.st_uid, stat.S_IMODE(after.st_mode) & 0o070) == (1234, 0)


def test_checked_output_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is a directory"):
        outfile.checked_output(str(tmp_path))


def test_a_catalog_damaged_past_its_header_is_exit_1_with_its_remedy(alice: Cli) -> None:
    # found by a query rather than by the open, it was a storage failure: "retry later"
    (catalog,) = [p for p in alice.config.parent.rglob("catalog.sqlite") if p.match("US/*")]
    db = sqlite3.connect(catalog)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with catalog.open("r+b") as file:
        file.seek(2 * 4096)
        file.write(b"\xff" * 4096)
    line = alice.fails(1, "get", "intl", "alice", "k")
    assert f"catalog {catalog} is damaged" in line and "forget again" in line


# 8. audit and receipt files: cut, missing, unwritable, on a full disk -------------


def us_key(cli: Cli) -> str:
    return str(cli.json("audit", "keys")["cells"]["US"])


def test_verifying_a_cut_tar_export_is_one_line_and_exit_1(alice: Cli, tmp_path: Path) -> None:
    # tarfile's "unexpected end of data" came out as a 40-line traceback
    whole = tmp_path / "x.tar"
    alice.ok("audit", "export", "--cell", "US", str(whole))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:1536])  # into the entries' data
    line = alice.fails(1, "audit", "verify", str(cut), "--key", us_key(alice))
    assert line.startswith(f"error: {cut} is not a whole audit export (truncated or damaged tar)")


def test_verifying_an_export_that_cannot_be_read_is_exit_2(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable tar said "is not an audit export: [Errno 13] ...", exit 1, and an
    unreadable directory "export has no FORMAT" (found in review)."""
    tar, folder = tmp_path / "x.tar", tmp_path / "x"
    alice.ok("audit", "export", "--cell", "US", str(tar))
    alice.ok("audit", "export", "--cell", "US", str(folder))
    real_open, real_scandir = os.open, os.scandir

    def denied_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path) == tar:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def denied_scandir(path: Any = ".") -> Any:
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "open", denied_open)  # root reads anything: stand-ins
    monkeypatch.setattr(os, "scandir", denied_scandir)
    for given in (tar, folder):
        line = alice.fails(2, "audit", "verify", str(given), "--key", us_key(alice))
        assert line == f"error: cannot read {given}: Permission denied"


def test_a_transparency_report_may_run_to_the_last_day_there_is(alice: Cli) -> None:
    # --to 9999-12-31, an open end, overflowed into a traceback
    for start in ("0001-01-01", "9999-12-31"):
        out = alice.ok("report", "transparency", "--from", start, "--to", "9999-12-31",
                       "--format", "json")  # fmt: skip
        report = json.loads(out)
        assert report["end"] is None  # open: 24:00 of the last day is not RFC 3339
        assert datetime.fromisoformat(report["start"]).date() == date.fromisoformat(start)
        assert bool(report["rows"]) == (start == "0001-01-01")  # alice's requests are today
    table = alice.ok("report", "transparency", "--from", "2026-01-01", "--to", "9999-12-31")
    assert "requests from 2026-01-01T00:00:00.000000Z, no end" in table.decode()


def test_audit_export_where_it_cannot_be_made_is_exit_2_and_makes_nothing(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a missing directory: the tar form exited 1 naming its temporary (.x.tar.partial),
    # the directory form made it (mkdir -p); an unwritable directory exited 1
    for destination in (tmp_path / "missing" / "x.tar", tmp_path / "missing" / "deep" / "dir"):
        line = alice.fails(2, "audit", "export", "--cell", "US", str(destination))
        assert line == f"error: cannot write {destination}: No such file or directory"
    assert not (tmp_path / "missing").exists()
    unwritable = tmp_path / "unwritable"
    unwritable.mkdir()
    real_access = os.access
    monkeypatch.setattr(  # root may write anywhere: a refused access stands in
        os, "access", lambda path, mode: Path(path) != unwritable and real_access(path, mode)
    )
    for name in ("x.tar", "dir"):
        line = alice.fails(2, "audit", "export", "--cell", "US", str(unwritable / name))
        assert line == f"error: cannot write {unwritable / name}: Permission denied"
    assert list(unwritable.iterdir()) == []


def test_audit_export_to_a_long_name_is_made_or_refused_before_a_head_is_signed(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its temporary was ".NAME.<8 random>.partial": a name of 238 bytes or more (a
    # valid one) failed "File name too long" once a head was signed; a name too long
    # for any file is still refused before
    for name in ("\xe9" * 125 + ".tar", "d" * 255):
        alice.ok("audit", "export", "--cell", "US", str(tmp_path / name))
        assert (tmp_path / name).exists()
    signed: list[str] = []
    publish = Governance.publish_head
    monkeypatch.setattr(
        Governance, "publish_head", lambda gov, cell: signed.append(cell) or publish(gov, cell)
    )
    for name in ("\xe9" * 126 + ".tar", "d" * 256):
        line = alice.fails(2, "audit", "export", "--cell", "US", str(tmp_path / name))
        # what is too long and what to do, not the system's "File name too long" alone
        assert line.endswith(
            f": a name in it is 256 bytes ({shown(name, 40)}), more than the 255 a file "
            "system allows: give a shorter path"
        )
    assert signed == []
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def test_audit_export_onto_a_full_disk_is_exit_1_and_leaves_nothing(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tar form left its spooled entries (.x.tar.partial.entries) behind
    def full_disk(log: AuditLog, out: object, count: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "_write_entries", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("x.tar", "dir"):
        line = alice.fails(1, "audit", "export", "--cell", "US", str(out / name))
        assert line == (
            f"error: cannot write {out / name}: No space left on device; make room and retry"
        )
    assert list(out.iterdir()) == []


def test_audit_export_never_touches_a_file_named_as_its_temporary_nor_the_deployment(
    alice: Cli, tmp_path: Path
) -> None:
    """Its temporary had a fixed name: a user's folder called so was deleted, a symlink
    called so was written through; and an export could be made inside the state
    directory or over the keyring's journal (found in review)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".report.partial").mkdir()
    (out / ".report.partial" / "notes.txt").write_text("mine")
    precious = out / "precious.txt"
    precious.write_text("mine too")
    (out / ".r.tar.partial").symlink_to(precious)
    alice.ok("audit", "export", "--cell", "US", str(out / "report"))
    alice.ok("audit", "export", "--cell", "US", str(out / "r.tar"))
    assert (out / ".report.partial" / "notes.txt").read_text() == "mine"
    assert precious.read_text() == "mine too" and (out / "r.tar").is_file()
    assert not (out / "r.tar").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".report.partial", ".r.tar.partial", "precious.txt", "report", "r.tar"]
    )
    demo = alice.config.parent
    for inside in (demo / "state" / "x", demo / "keys" / "keyring.destroyed.sqlite-journal"):
        line = alice.fails(2, "audit", "export", "--cell", "US", str(inside))
        assert "write the export outside the deployment's files" in line
        assert not inside.exists()


class FullFile(io.BufferedWriter):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_audit_head_onto_a_full_disk_names_the_file_and_leaves_none(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # exit 1 with "error: No space left on device" (no file, nothing to do), and the
    # file left empty: it was written in place
    out = tmp_path / "out"
    out.mkdir()
    real_open = io.open

    def in_out(file: object) -> bool:
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else str(file)
        return Path(os.path.abspath(name)).parent == out.resolve()

    def full_disk(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode and in_out(file):  # what open() and os.fdopen() open for writing
            return FullFile(io.FileIO(file, "w"))  # type: ignore[arg-type]
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(io, "open", full_disk)
    line = alice.fails(1, "audit", "head", "--cell", "US", "-o", str(out / "head.note"))
    assert line == (
        f"error: cannot write {out / 'head.note'}: No space left on device; make room and retry"
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["missing", "."])
def test_receipt_verify_of_a_path_that_cannot_be_read_is_exit_2(
    alice: Cli, tmp_path: Path, name: str
) -> None:
    # exit 1, as if the receipt were refused, where audit verify --head and put exit 2
    given = tmp_path / name
    line = alice.fails(2, "receipt", "verify", str(given), "--key", us_key(alice))
    assert line.startswith(f"error: cannot read {given}: ")


# 9. a name that is not UTF-8 (a file's, an argument's) in output ----------------

STRICT = {"PYTHONIOENCODING": "utf-8:strict"}  # a UTF-8 locale's stdout, as en_US.UTF-8


def utf8(data: bytes) -> str:
    """DATA decoded strictly, as a consumer of UTF-8 (jq, a JSON parser) reads it."""
    return data.decode("utf-8", errors="strict")


@pytest.fixture
def undecodable(tmp_path: Path) -> Path:
    """A tree holding a source file whose name has the byte 0xff, not UTF-8, with a
    finding in it (Python holds such a name as the lone surrogate U+DCFF)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / os.fsdecode(b"a\xff.py")).write_text('URL = "http://1.2.3.4/"\n')  # low
    return tree


@pytest.mark.parametrize("env", [{}, STRICT], ids=["C.UTF-8", "strict"])
def test_a_scanned_name_that_is_not_utf8_is_escaped_in_every_report(
    undecodable: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    # JSON carried the raw byte 0xff (not UTF-8: jq read U+FFFD) or, where stdout is
    # strict, crashed with a UnicodeEncodeError traceback, as SARIF, -o and
    # --write-baseline always did
    def scan(*args: str) -> bytes:
        done = shardvault(tmp_path / "none.toml", "scan", str(undecodable), *args,
                          stdout=subprocess.PIPE, env=env)  # fmt: skip
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
        utf8(done.stderr)
        return done.stdout

    report = json.loads(utf8(scan("--format", "json")))
    assert [f["path"] for f in report["findings"]] == ["a\\xff.py"]
    sarif = json.loads(utf8(scan("--format", "sarif")))
    (result,) = sarif["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "a%FF.py"
    assert "a\\xff.py:1:" in utf8(scan())
    scan("--format", "json", "-o", str(tmp_path / "report.json"))
    assert json.loads(utf8((tmp_path / "report.json").read_bytes())) == {
        **report,
        "summary": {**report["summary"], "seconds": ANY},
    }
    scan("--write-baseline", str(tmp_path / "baseline.json"))
    baseline = json.loads(utf8((tmp_path / "baseline.json").read_bytes()))
    assert [f["path"] for f in baseline["findings"]] == ["a\\xff.py"]
    accepted = json.loads(scan("--format", "json", "--baseline", str(tmp_path / "baseline.json")))
    assert accepted["findings"] == [] and accepted["summary"]["suppressed_baseline"] == 1


def test_an_argument_that_is_not_utf8_is_escaped_in_json(alice: Cli, tmp_path: Path) -> None:
    # ensure_ascii wrote the lone surrogate as "\udcff": valid for Python, but jq and
    # strict parsers read U+FFFD or refuse the document
    tar = tmp_path / os.fsdecode(b"audit-\xff.tar")
    done = shardvault(alice.config, "audit", "export", "--cell", "US", str(tar), "--json",
                      stdout=subprocess.PIPE, env=STRICT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = utf8(done.stdout)
    assert "\\udcff" not in text
    assert json.loads(text)["path"] == f"{tmp_path}/audit-\\xff.tar"


def test_an_undecodable_byte_reads_the_same_in_an_error_as_in_output(alice: Cli) -> None:
    # an error line wrote the byte as Python's surrogate, 'k\udcff', where output
    # (and a shell's $'...') writes k\xff; a backslash typed stays told apart
    done = shardvault(alice.config, "get", "intl", "alice", os.fsdecode(b"k\xff"), env=STRICT)
    assert one_error_line(done, 2) == "error: invalid object key 'k\\xff': not valid Unicode text"
    done = shardvault(alice.config, "ls", "intl", os.fsdecode(b"\\\xff\xc2\x85"), env=STRICT)
    assert "'\\\\\\xff\\u0085'" in one_error_line(done, 2)


def test_an_undecodable_byte_not_quoted_in_an_error_is_written_as_the_byte(
    tmp_path: Path,
) -> None:
    # a path the message holds as it is (no quotes: it is printable but for the byte)
    # reached the error line as the lone surrogate, which the line's escaping wrote
    # \udcff; and a character U+0085 there was \x85, as the byte 0x85 is written
    export = tmp_path / os.fsdecode(b"ex\xff\xc2\x85")
    done = shardvault(tmp_path / "none.toml", "audit", "verify", str(export), "--key", "k",
                      env=STRICT)  # fmt: skip
    assert one_error_line(done, 2) == f"error: no export at {tmp_path}/ex\\xff\\u0085"


X_FF = os.fsdecode(b"x\xff")
POLICY_CHECK = [
    *("policy", "check", "--principal", "p", "--tenant", "intl", "--jurisdiction", "US"),
    *("--purpose", "read", "--principal-tenant", "intl", "--location", "US"),
]


@pytest.mark.parametrize(
    "args",
    [
        ["report", "transparency", "--from", X_FF, "--to", "2026-01-01"],
        [*POLICY_CHECK, "--action", X_FF, "--kind", "service"],
        [*POLICY_CHECK, "--action", "read", "--kind", X_FF],
        [*POLICY_CHECK, "--action", "read", "--kind", "service", "--data-class", X_FF],
        [*POLICY_CHECK, "--action", "read", "--kind", "service", "--purpose", X_FF],
        ["ls", "intl", "alice", "--prefix", X_FF],
        ["ls", "intl", "alice", "--start-after", X_FF],
        ["scan", ".", "--format", X_FF],
        ["audit", "verify", ".", "--key", X_FF],
        ["receipt", "verify", "r", "--key", f"{X_FF}+00000000+AQ{'A' * 42}"],
    ],
    ids=[
        "report-from",
        "policy-action",
        "policy-kind",
        "data-class",
        "policy-purpose",  # answered deny "for 'x\\udcff'": one no request can declare
        "ls-prefix",
        "ls-start-after",
        "scan-format",
        "verifier-key",
        "key-name",
    ],
)
def test_an_undecodable_byte_of_an_argument_quoted_in_an_error_is_written_as_the_byte(
    alice: Cli, tmp_path: Path, args: list[str]
) -> None:
    # these messages quoted the argument with !r, its repr: 'x\udcff', not 'x\xff'
    (tmp_path / "r").write_bytes(b"receipt")
    done = shardvault(alice.config, *args, env=STRICT, cwd=tmp_path)
    line = one_error_line(done, 2)
    assert "'x\\xff" in line and "\\udc" not in line, line


def test_the_next_page_hint_of_ls_is_a_key_a_shell_reads_back_as_it_is(
    alice: Cli, tmp_path: Path
) -> None:
    # the hint quoted the key with repr: "it's $HOME" (a shell expands $HOME in it),
    # 'a"b\'c' (a backslash is no escape in a shell's single quotes)
    source = tmp_path / "in.txt"
    for key in ("it's $HOME", "a\"b'c `id`", "zz"):
        alice.ok("put", "intl", "alice", key, str(source))
    for after in ("", "a\"b'c `id`"):
        code, _, err = alice("ls", "intl", "alice", "--limit", "1", "--start-after", after)
        assert code == 0, err
        (hint,) = [line for line in err.splitlines() if line.startswith("more: --start-after ")]
        quoted = hint.removeprefix("more: --start-after ")
        read = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True)
        assert read.stdout == ("a\"b'c `id`" if after == "" else "it's $HOME")


@pytest.mark.parametrize(
    "name",
    ["my demo", 'it\'s "demo" $HOME `id`', os.fsdecode(b"it's d\xff"), "a\tb"],
    ids=["space", "quotes", "not-utf8", "tab"],
)
def test_the_hint_of_init_is_a_command_a_shell_runs_as_it_is(tmp_path: Path, name: str) -> None:
    # the hint named the config unquoted: pasted, "shardvault --config my demo/..."
    # gave the shell two arguments, and a quote left it waiting for its other half
    done = shardvault(tmp_path / "none.toml", "init", "--demo", name, env=STRICT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (hint,) = [line for line in utf8(done.stderr).splitlines() if "use it with: " in line]
    command = hint.split("use it with: ", 1)[1].removesuffix(" ...")
    path = f"{BINARY.parent}{os.pathsep}{os.environ['PATH']}"
    ran = subprocess.run(["bash", "-c", f"{command} nodes --json"], capture_output=True,
                         cwd=tmp_path, env={**os.environ, "PATH": path}, check=False)  # fmt: skip
    assert ran.returncode == 0, (command, ran.stderr)
    assert len(json.loads(ran.stdout)["nodes"]) == 18


def test_an_undecodable_byte_in_a_note_on_stderr_is_written_as_the_byte(tmp_path: Path) -> None:
    # notes and warnings went to stderr as Python writes a lone surrogate there,
    # \udcff, where error lines and output write the byte \xff
    target = tmp_path / os.fsdecode(b"demo\xff")
    done = shardvault(tmp_path / "none.toml", "init", "--demo", str(target), env=STRICT)
    assert done.returncode == 0, done.stderr
    note = utf8(done.stderr)
    assert f"wrote {tmp_path}/demo\\xff/shardvault.toml" in note and "\\udc" not in note


def test_a_newline_in_a_note_on_stderr_is_escaped_so_the_note_is_one_line(
    tmp_path: Path,
) -> None:
    """`init --demo $'a\\nb'` wrote its note `wrote a` and `b/shardvault.toml; use it
    with: ...` on two lines (a line a log reader takes for another message), while an
    error line escapes the newline. A note and a warning escape it the same way."""
    target = tmp_path / "demo\nnext"
    done = shardvault(tmp_path / "none.toml", "init", "--demo", str(target), env=STRICT)
    assert done.returncode == 0, done.stderr
    lines = utf8(done.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"wrote {tmp_path}/demo\\nnext/shardvault.toml; use it with: ")
    assert (target / "shardvault.toml").is_file()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([X_FF], "No such command 'x\\xff'."),
        (["audit", X_FF], "No such command 'x\\xff'."),
        (["nodes", f"--{X_FF}"], "No such option: --x\\xff"),
        ([f"--{X_FF}", "nodes"], "No such option: --x\\xff"),
        (["nodes", X_FF], "Got unexpected extra argument(s) (x\\xff)"),
        (["nodes", "a\u202ec"], "Got unexpected extra argument(s) (a\\u202ec)"),  # reversed
    ],
    ids=["command", "subcommand", "option", "global-option", "extra-argument", "bidi"],
)
def test_an_undecodable_byte_in_a_usage_error_is_written_as_the_byte(
    tmp_path: Path, args: list[str], said: str
) -> None:
    # the framework's own usage box wrote the byte as Python's surrogate, 'x\udcff'
    # (quoted with repr) or \udcff (as it is, six columns its box counted as one)
    done = shardvault(tmp_path / "none.toml", *args, env=STRICT)
    assert done.returncode == 2
    err = utf8(done.stderr)
    assert "Traceback" not in err and "\\udc" not in err, err
    (message,) = [line.strip("│ ") for line in err.splitlines() if line.startswith("│")]
    assert message == said


@pytest.mark.parametrize(
    ("args", "command", "said"),
    [
        (["get", "intl", "alice", "k", "-o"], "get", "Option '-o' requires an argument."),
        (["--config"], "", "Option '--config' requires an argument."),
        (["gc", "--grace"], "gc", "Option '--grace' requires an argument."),
        (["audit", "export", "--cell"], "audit export", "Option '--cell' requires an argument."),
        (["ls", "intl", "alice", "--json=x"], "ls", "Option '--json' does not take a value."),
    ],
    ids=["get-o", "config", "gc-grace", "audit-export-cell", "flag-given-a-value"],
)
def test_an_option_missing_its_value_is_a_usage_error_like_any_other(
    tmp_path: Path, args: list[str], command: str, said: str
) -> None:
    """An option given no value (`get ... -o`, `--config` last) or a flag given one was
    the error box alone: no usage line, no hint, unlike every other usage error."""
    done = shardvault(tmp_path / "none.toml", *args, env=STRICT)
    assert done.returncode == 2
    err = utf8(done.stderr)
    assert "Traceback" not in err, err
    usage, hint = err.splitlines()[:2]
    name = f"shardvault {command}".rstrip()
    assert usage.startswith(f"Usage: {name} [OPTIONS]"), err
    assert hint == f"Try '{name} --help' for help.", err
    (message,) = [line.strip("│ ") for line in err.splitlines() if line.startswith("│")]
    assert message == said


INTEGER, NUMBER = "is not a valid integer", "is not a valid number"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["ls", "intl", "alice", "--limit", X_FF], f"'--limit': 'x\\xff' {INTEGER}"),
        (["ls", "intl", "alice", "--limit", "x"], f"'--limit': 'x' {INTEGER}"),
        (["get", "intl", "alice", "k", "-v", X_FF], f"'--version' / '-v': 'x\\xff' {INTEGER}"),
        (
            ["put", "intl", "alice", "k", "-", "--if-match", X_FF],
            f"'--if-match': 'x\\xff' {INTEGER}",
        ),
        (["gc", "--grace", X_FF], f"'--grace': 'x\\xff' {NUMBER}"),
        (["principal", "token", "p", "--ttl-days", "1\udcff"], f"'--ttl-days': '1\\xff' {NUMBER}"),
        (["audit", "prove-inclusion", "--cell", "US", X_FF], f"'INDEX': 'x\\xff' {INTEGER}"),
        (["scan", ".", "--jobs", X_FF], f"'--jobs': 'x\\xff' {INTEGER}"),
    ],
    ids=["--limit", "ascii", "--version", "--if-match", "--grace", "--ttl-days", "INDEX", "--jobs"],
)
def test_a_number_that_is_not_one_is_named_in_its_usage_error(
    tmp_path: Path, args: list[str], said: str
) -> None:
    # a value not UTF-8 said "Input should be a valid string, unable to parse raw data as a
    # unicode string", one not a number "Input should be a valid integer, unable to parse
    # string as an integer": neither named the value given
    done = shardvault(tmp_path / "none.toml", *args, env=STRICT)
    assert done.returncode == 2
    err = utf8(done.stderr)
    assert "Traceback" not in err and "\\udc" not in err, err
    box = [line.strip("│ ") for line in err.splitlines() if line.startswith("│")]
    assert " ".join(box) == f"Invalid value for {said}"  # the box wraps a long line
