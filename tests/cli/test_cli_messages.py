"""Messages that said the wrong thing, or said it as a boxed usage error: each is one line
saying what was wrong and what to do."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import Cli, alice_holding_k

from conftest import make_deployment

NFD = "e\u0301"  # looks like the NFC "\xe9"


@pytest.fixture
def alice(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    return alice_holding_k(Cli(make_deployment(tmp_path / "demo"), capsysbinary), tmp_path)


def unreadable(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    """Make PATHS unreadable, not unwritable, as a user other than root finds them (root
    reads anything): os.access says so, as Click asks it, and opening one to read fails
    (by `Path.open` or `os.open`)."""
    denied = {str(p) for p in paths}
    access, path_open, os_open = os.access, pathlib.Path.open, os.open

    def may(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if mode & os.R_OK and os.fspath(path) in denied:
            return False
        return access(path, mode, *args, **kwargs)

    def opened(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(self) in denied and "r" in mode:
            raise PermissionError(13, "Permission denied", str(self))
        return path_open(self, mode, *args, **kwargs)

    def opened_fd(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) in denied and flags & os.O_ACCMODE != os.O_WRONLY:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "access", may)
    monkeypatch.setattr(pathlib.Path, "open", opened)
    monkeypatch.setattr(os, "open", opened_fd)


def test_an_unreadable_config_is_one_line_not_a_usage_box(
    alice: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable(monkeypatch, alice.config)
    line = alice.fails(2, "ls", "intl", "alice")
    assert line == f"error: config {alice.config}: Permission denied"


POLICIES = Path(__file__).resolve().parents[1] / "policy"
CHECK = [
    "--principal", "x", "--kind", "employee", "--location", "US", "--action", "read",
    "--tenant", "intl", "--jurisdiction", "US", "--purpose", "p",
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        # a file deep in a tree that cannot be read is listed as skipped; the one asked
        # for is refused: a gate must not pass having scanned nothing (found in review)
        (["scan", "{denied}"], 2, "cannot read"),
        (["scan", "{source}", "--policy", "{denied}"], 2, "Permission denied"),
        (["scan", "{source}", "--baseline", "{denied}"], 2, "Permission denied"),
        (["scan", "{source}", "-o", "{denied}"], 0, ""),  # written, never read
        (["scan", "{source}", "--write-baseline", "{denied}"], 0, ""),
        (["policy", "test", "{denied}", "--policy", str(POLICIES / "policy.toml")], 2, "Perm"),
        (["policy", "test", str(POLICIES / "cases.toml"), "--policy", "{denied}"], 2, "Perm"),
        (["policy", "check", *CHECK, "--policy", "{denied}"], 2, "Permission denied"),
    ],
    ids=[
        "scan PATH",
        "scan --policy",
        "scan --baseline",
        "scan -o",
        "scan --write-baseline",
        "policy test FILE",
        "policy test --policy",
        "policy check --policy",
    ],
)
def test_a_path_option_click_would_find_unreadable_is_the_commands_to_judge(
    alice: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    said: str,
) -> None:
    source, denied = tmp_path / "a.py", tmp_path / "denied"
    source.write_text("x = 1\n")
    denied.write_text("x = 1\n")
    unreadable(monkeypatch, denied)
    args = [a.format(source=source, denied=denied) for a in argv]
    if code == 0:
        alice.ok(*args)
    else:
        assert said in alice.fails(code, *args)


def test_an_empty_output_name_says_so(alice: Cli) -> None:
    line = alice.fails(2, "get", "intl", "alice", "k", "-o", "")
    assert line == "error: -o is empty; give a file name"


EMPTY_PATHS = {
    "scan PATH": (["scan", ""], "PATH"),
    "put FILE": (["put", "intl", "alice", "k2", ""], "FILE"),  # "cannot read : No such file"
    "scan --policy": (["scan", "{source}", "--policy", ""], "--policy"),
    "scan --baseline": (["scan", "{source}", "--baseline", ""], "--baseline"),
    "scan --write-baseline": (["scan", "{source}", "--write-baseline", ""], "--write-baseline"),
    "scan --output": (["scan", "{source}", "--output", ""], "--output"),
    "forget --receipt": (["forget", "intl", "alice", "--receipt", ""], "--receipt"),
    "policy test FILE": (["policy", "test", ""], "FILE"),
    "policy test --policy": (["policy", "test", "{source}", "--policy", ""], "--policy"),
    "policy check --policy": (["policy", "check", *CHECK, "--policy", ""], "--policy"),
    "audit export DESTINATION": (["audit", "export", "--cell", "US", ""], "DESTINATION"),
    "audit verify EXPORT": (["audit", "verify", "", "--key", "k"], "EXPORT"),
    "audit verify --head": (["audit", "verify", "{source}", "--key", "k", "--head", ""], "--head"),
    "receipt verify RECEIPT": (["receipt", "verify", "", "--key", "k"], "RECEIPT"),
}


@pytest.mark.parametrize(("argv", "name"), EMPTY_PATHS.values(), ids=EMPTY_PATHS.keys())
def test_an_empty_path_is_refused_not_read_as_the_current_directory(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], name: str
) -> None:
    # Path("") is Path("."): `scan ""` (a script's unset variable) scanned the current
    # directory and passed the gate; the others named "." in their errors
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    line = alice.fails(2, *(a.format(source=source) for a in argv))
    written = name in ("--write-baseline", "--output", "--receipt")  # as get -o says it
    assert line == f"error: {name} is empty; give a {'file name' if written else 'path'}"


def test_an_empty_config_path_is_refused_as_empty(alice: Cli) -> None:
    code, _out, err = alice("--config", "", "nodes", config=False)
    assert (code, err) == (2, "error: the config path is empty: name the deployment's file\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{bad}", "nodes"],
        ["scan", "{bad}"],
        ["scan", "{source}", "--policy", "{bad}"],
        ["scan", "{source}", "--baseline", "{bad}"],
        ["audit", "verify", "{bad}", "--key", "k"],
    ],
    ids=["--config", "scan PATH", "scan --policy", "scan --baseline", "audit verify EXPORT"],
)
@pytest.mark.parametrize(
    ("bad", "escaped"), [("a\nb", "a\\nb"), ("a\u202eb", "a\\u202eb")], ids=["newline", "rtl"]
)
def test_a_path_given_with_a_newline_or_a_bidi_control_is_escaped_in_its_error(
    alice: Cli, tmp_path: Path, argv: list[str], bad: str, escaped: str
) -> None:
    # echoed as given, a newline split the error in two lines (a script reads the last
    # as the error) and a right-to-left override reordered the rest of the line
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    code, _out, err = alice(*(a.format(bad=bad, source=source) for a in argv), config=False)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and escaped in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["receipt", "verify", "{endless}", "--key", "k"],
        ["audit", "verify", "{source}", "--key", "k", "--head", "{endless}"],
        ["policy", "test", "{endless}", "--policy", str(POLICIES / "policy.toml")],
        ["policy", "test", str(POLICIES / "cases.toml"), "--policy", "{endless}"],
        ["policy", "check", *CHECK, "--policy", "{endless}"],
        ["scan", "{source}", "--policy", "{endless}"],
        ["scan", "{source}", "--baseline", "{endless}"],
    ],
    ids=[
        "receipt verify",
        "audit verify --head",
        "policy test FILE",
        "policy test --policy",
        "policy check --policy",
        "scan --policy",
        "scan --baseline",
    ],
)
def test_a_file_given_that_never_ends_is_refused_not_read_whole(
    alice: Cli, tmp_path: Path, argv: list[str]
) -> None:
    # read whole into memory: a pipe that never ends, /dev/zero (now refused as a
    # device) or a disk image named by mistake grew the process until MemoryError
    # printed a traceback, or the kernel killed it
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    with endless_pipe() as endless:
        line = alice.fails(2, *(a.format(source=source, endless=endless) for a in argv))
    assert line.startswith(f"error: {endless} is larger than ") and "is it the right file?" in line


@contextlib.contextmanager
def endless_pipe() -> Iterator[str]:
    """/dev/fd/N of a pipe whose writer writes until its reader goes: `<(yes)`."""
    read_end, write_end = os.pipe()

    def write() -> None:
        with contextlib.suppress(OSError), os.fdopen(write_end, "wb") as out:
            while True:
                out.write(bytes(65536))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield f"/dev/fd/{read_end}"
    finally:
        os.close(read_end)
        writer.join()


def test_an_if_match_out_of_range_names_0_as_valid(alice: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    line = alice.fails(2, "put", "intl", "alice", "new", str(source), "--if-match", "-1")
    assert line == (
        "error: version -1 is out of range: --if-match takes 0 (the key must be new) "
        f"or a version from 1 to {2**63 - 1}"
    )
    alice.ok("put", "intl", "alice", "new", str(source), "--if-match", "0")


def test_rm_if_match_deletes_only_the_version_the_caller_saw(alice: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"one\n")
    alice.ok("put", "intl", "alice", "doc", str(source))
    alice.ok("put", "intl", "alice", "doc", str(source))  # another writer, since v1 was read
    line = alice.fails(1, "rm", "intl", "alice", "doc", "--if-match", "1")
    assert line == "error: intl/alice/doc: expected version 1, current is 2"
    assert alice.json("stat", "intl", "alice", "doc")["version"] == 2
    line = alice.fails(2, "rm", "intl", "alice", "doc", "--if-match", "0")
    assert line == (
        "error: version 0 is out of range: a delete's --if-match takes a version from 1 "
        f"to {2**63 - 1}"
    )
    line = alice.fails(2, "rm", "intl", "alice", "doc", "--if-match", "2", "--version", "2")
    assert "give one or the other" in line
    assert alice.json("rm", "intl", "alice", "doc", "--if-match", "2") == {
        "tenant": "intl",
        "subject": "alice",
        "key": "doc",
        "deleted_versions": 2,
    }
    assert "no object" in alice.fails(1, "stat", "intl", "alice", "doc")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("put", "Refuse unless this is the current version (0: new)."),
        ("rm", "Refuse unless this is the current version."),
    ],
)
def test_rm_and_put_say_if_match_alike(
    alice: Cli, monkeypatch: pytest.MonkeyPatch, command: str, said: str
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = alice(command, "--help")
    assert code == 0
    assert re.search(rf"--if-match\s+N\s+{re.escape(said)}", out.decode()), out.decode()


@pytest.mark.parametrize(
    ("option", "what"), [("--prefix", "prefix"), ("--start-after", "start-after key")]
)
def test_ls_refuses_a_prefix_not_in_nfc_as_get_refuses_the_key(
    alice: Cli, option: str, what: str
) -> None:
    line = alice.fails(2, "ls", "intl", "alice", option, NFD)
    assert line == f"error: invalid {what} 'e\\u0301': normalise it to Unicode NFC first"
    alice.ok("ls", "intl", "alice", option, "\xe9")


@pytest.mark.parametrize("command", ["get", "stat", "rm", "where"])
def test_a_key_not_in_nfc_is_shown_escaped(alice: Cli, command: str) -> None:
    line = alice.fails(2, command, "intl", "alice", f"caf{NFD}")
    assert line == "error: invalid object key 'cafe\\u0301': normalise it to Unicode NFC first"


@pytest.mark.parametrize(
    ("version", "code", "said"),
    [
        ("2", 1, "config {config} is of format version 2; this shardvault reads version 1: "
                 "upgrade shardvault"),
        ("0", 2, "config {config}: version: must be 1 (found 0)"),
        ('"2"', 2, "config {config}: version: must be 1 (found '2')"),
    ],
    ids=["newer", "zero", "string"],
)  # fmt: skip
def test_a_config_of_a_newer_format_says_to_upgrade(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], version: str, code: int, said: str
) -> None:
    # version 2 was bad input, exit 2, "must be 1": the file is fine, this shardvault
    # is too old for it, as the catalogs, keyring and audit logs say (exit 1)
    config = make_deployment(
        tmp_path / "demo", edit=lambda t: t.replace("version = 1", f"version = {version}", 1)
    )
    line = Cli(config, capsysbinary).fails(code, "nodes")
    assert line == "error: " + said.format(config=config)


def _at_version(text: str) -> str:
    return text.replace("version = 1", "version = VERSION", 1)


# each file shardvault reads with a `version`: where it is ({demo}: the deployment's
# directory), its text with the version as VERSION (None: the deployment's own), and
# the command that reads it
VERSIONED: dict[str, tuple[str, str | None, list[str]]] = {
    "access policy": (
        "{tmp}/policy.toml",
        _at_version((POLICIES / "policy.toml").read_text()),
        ["policy", "check", *CHECK, "--policy", "{file}"],
    ),
    "decision table": (
        "{tmp}/cases.toml",
        _at_version((POLICIES / "cases.toml").read_text()),
        ["policy", "test", "{file}", "--policy", str(POLICIES / "policy.toml")],
    ),
    "deployment's access policy": ("{demo}/policy.toml", None, ["ls", "intl", "alice"]),
    "custodian policy": ("{demo}/partner/custodian-policy.toml", None, ["ls", "intl", "alice"]),
    "scan policy": (
        "{tmp}/scan-policy.toml",
        "version = VERSION\n[jurisdictions]\ndisallowed = ['CN']\n",
        ["scan", str(POLICIES), "--policy", "{file}"],
    ),
    "scan baseline": (
        "{tmp}/baseline.json",
        '{"format": "shardvault-scan-baseline", "version": VERSION, "findings": []}',
        ["scan", str(POLICIES), "--baseline", "{file}"],
    ),
}


@pytest.mark.parametrize("reader", VERSIONED)
@pytest.mark.parametrize(
    ("version", "code"), [("2", 1), ("0", 2), ("-1", 2), ("true", 2), ("1.0", 2)]
)
def test_a_file_of_a_newer_format_says_to_upgrade_and_a_bad_version_is_bad_input(
    alice: Cli, tmp_path: Path, reader: str, version: str, code: int
) -> None:
    # version 2 was bad input, exit 2 ("this reader knows version 1"), where the config,
    # the catalogs, the keyring and the audit logs of a newer shardvault say upgrade, exit 1
    where, text, argv = VERSIONED[reader]
    file = Path(where.format(tmp=tmp_path, demo=alice.config.parent))
    text = _at_version(file.read_text()) if text is None else text
    file.write_text(text.replace("VERSION", version, 1))
    line = alice.fails(code, *(a.format(file=file) for a in argv))
    upgrade = f"{file} is of format version 2; this shardvault reads version 1: upgrade shardvault"
    if code == 1:  # a baseline's error names it "baseline FILE", as its others do
        assert line in (f"error: {upgrade}", f"error: baseline {upgrade}")
    else:
        assert "version" in line and "upgrade" not in line


@pytest.mark.parametrize(
    "where",
    ["{demo}/policy.toml", "{demo}/partner/custodian-policy.toml"],
    ids=["access", "custodian"],
)
@pytest.mark.parametrize("text", ["", "# cut short before its version\n"], ids=["empty", "cut"])
def test_a_policy_emptied_or_cut_short_says_it_has_no_version_and_what_to_do(
    alice: Cli, where: str, text: str
) -> None:
    # it said "has version None; this reader knows version 1": neither what was wrong
    # with the file nor what to do
    file = Path(where.format(demo=alice.config.parent))
    file.write_text(text)
    line = alice.fails(2, "ls", "intl", "alice")
    assert line == (
        f"error: {file} has no version: restore it from a backup if it was emptied or cut "
        "short, else add 'version = 1'"
    )


def _lose_shards(alice: Cli, deleted: int, unavailable: int) -> list[str]:
    """Delete k's shard on DELETED of its nodes and move the directories of the next
    UNAVAILABLE away; returns the ids of those made unavailable."""
    nodes = [s["node"] for s in alice.json("where", "intl", "alice", "k")["shards"]]
    base = alice.config.parent / "nodes" / "US"
    for node in nodes[:deleted]:
        shards = [p for p in (base / node).rglob("*") if p.is_file() and p.name != "NODE"]
        assert len(shards) == 1, shards
        shards[0].unlink()
    away = nodes[deleted : deleted + unavailable]
    for node in away:
        (base / node).rename(base / f"{node}.away")
    return away


def test_a_segment_lost_to_deleted_shards_does_not_send_for_nodes_that_are_up(
    alice: Cli,
) -> None:
    # it said "bring its unavailable nodes back ('shardvault nodes')" with every node up
    _lose_shards(alice, deleted=3, unavailable=0)
    line = alice.fails(1, "get", "intl", "alice", "k")
    assert line.startswith("error: intl/alice/k v1 segment 0: only 3 of the 4 shards needed")
    assert "(3 missing); the object cannot be read: its shards were deleted or damaged" in line
    assert "restore it from a backup" in line and "bring" not in line


def test_a_segment_lost_to_unavailable_nodes_names_them(alice: Cli) -> None:
    away = _lose_shards(alice, deleted=1, unavailable=2)
    line = alice.fails(1, "get", "intl", "alice", "k")
    assert "intact (2 on a node that could not be read, 1 missing)" in line
    assert f"the object cannot be read: bring node(s) {', '.join(sorted(away))} back" in line
    assert line.endswith("or restore it from a backup")
