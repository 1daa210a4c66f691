"""Any argv, run in-process: exit 0, 1 or 2, and an error is one line, never a traceback.

Each example is a command's usual shape with one or two of its values swapped for
something hostile (empty, overlong, `..`, NUL, a lone surrogate, a newline, a
right-to-left override, a device, a number out of range...), which reaches the
command's own checks rather than stopping at the option parser.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardvault.cli.app import main

TEMPLATES = [
    "put intl alice KEY FILE",
    "put intl alice KEY FILE --if-match NUMBER",
    "get intl alice KEY",
    "get intl alice KEY -o PATH",
    "get intl alice KEY --version NUMBER",
    "ls intl alice --prefix KEY --start-after KEY --limit NUMBER --json",
    "stat intl alice KEY --version NUMBER --json",
    "versions intl alice KEY --json",
    "where intl alice KEY --json",
    "rm intl alice KEY --version NUMBER",
    "rm intl alice KEY --if-match NUMBER",
    "subject add TENANT SUBJECT --jurisdiction CELL",
    "forget TENANT SUBJECT --receipt PATH",
    "nodes --json",
    "gc --grace NUMBER --json",
    "principal add SUBJECT --tenant TENANT --kind service --location CELL --ttl-days NUMBER",
    "principal token SUBJECT --ttl-days NUMBER",
    "principal revoke SUBJECT --token-id WORD",
    "approval approve WORD",
    "approval approve WORD --signing-key FILE",
    "approval deny WORD --signing-key FILE",
    "approval keygen PATH",
    "policy check --principal SUBJECT --action WORD --tenant TENANT --jurisdiction CELL "
    "--purpose WORD --kind service",
    "policy test FILE --policy FILE",
    "audit head --cell CELL -o PATH --json",
    "audit prove-inclusion --cell CELL NUMBER --size NUMBER",
    "audit prove-consistency --cell CELL NUMBER NUMBER",
    "audit verify FILE --key WORD --head FILE",
    "report transparency --from WORD --to WORD --format WORD",
    "receipt verify FILE --key WORD",
    "--purpose WORD --approval WORD get intl alice KEY",
    "--token WORD --as SUBJECT ls intl alice",
    "--config FILE nodes",
]

USUAL = {
    "KEY": ["k", "photos/cat.jpg"],
    "FILE": ["in.txt", "-"],
    "PATH": ["out.bin"],
    "NUMBER": ["1", "0"],
    "TENANT": ["intl"],
    "SUBJECT": ["alice", "bob"],
    "CELL": ["US", "EU"],
    "WORD": ["read", "json"],
}

HOSTILE = [
    "", "-", ".", "..", "../x", "/", "a\\b", "a//b", "x" * 2000, "\xe9", "e\u0301",
    "\u202eabc", "a\u200bb", "a\nb", "a\x00b", "\udcff", "\ud800", "-1", "nan", "inf",
    "1e999", "9" * 30, "/proc/version", "/dev/null", "/dev/full", "/dev/fd/99", "in.txt/",
    "deploy/keys/keyring.json", "deploy", "--json", "[bold]x[/]",
]  # fmt: skip

hostile = st.sampled_from(HOSTILE) | st.text(max_size=12)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    words = draw(st.sampled_from(TEMPLATES)).split()
    slots = [i for i, word in enumerate(words) if word in USUAL]
    argv = [draw(st.sampled_from(USUAL[w])) if w in USUAL else w for w in words]
    if not slots:
        return argv
    for slot in draw(st.lists(st.sampled_from(slots), min_size=1, max_size=2, unique=True)):
        argv[slot] = draw(hostile)
    return argv


CONFIG = ["--config", "deploy/shardvault.toml"]
ALICE = ["intl", "alice"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo deployment with intl/alice holding k, and in.txt beside it."""
    base = tmp_path_factory.mktemp("argv")
    with contextlib.chdir(base):
        Path("in.txt").write_bytes(b"payload\n")
        assert run(["init", "--demo", "deploy"])[0] == 0
        for argv in (
            ["subject", "add", "intl", "alice", "-j", "US"],
            ["put", *ALICE, "k", "in.txt"],
        ):
            assert run([*CONFIG, *argv])[0] == 0
    return base


def run(argv: list[str]) -> tuple[int, str]:
    """main(ARGV) with stdin holding a few bytes and stdout and stderr captured."""
    with streams() as err:
        code = main(argv)
    return code, err.getvalue()


@contextlib.contextmanager
def streams() -> Iterator[io.StringIO]:
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(b"from stdin\n"))
    sys.stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    sys.stderr = err = io.StringIO()
    try:
        yield err
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


@settings(
    max_examples=150,
    deadline=None,  # a command opens the vault: tens of ms, more on a loaded machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=argvs())
def test_any_argv_exits_0_1_or_2_with_one_error_line(deployment: Path, argv: list[str]) -> None:
    with contextlib.chdir(deployment):
        code, err = run([*CONFIG, *argv])
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err
    if code != 0 and not err.rstrip().endswith("╯"):  # else a usage error, boxed
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
