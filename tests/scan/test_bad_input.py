"""Bad input is reported and skipped (or scanned with a caveat), never a crash."""

from __future__ import annotations

import codecs
import os
import threading
from pathlib import Path

import pytest

from shardvault.scan import Limits, ScanOptions, WalkOptions, scan_tree
from shardvault.scan.engine import FileResults, Scanner
from shardvault.scan.languages import language_for
from shardvault.scan.policy import Policy
from shardvault.scan.walk import SourceFile


def skips(report_skipped: list) -> list[tuple[str, str, bool]]:
    return [(s.path, str(s.reason), s.scanned) for s in report_skipped]


def test_file_vanishing_or_not_a_file_after_the_walk_is_reported_unreadable(tmp_path: Path) -> None:
    (tmp_path / "dir.kt").mkdir()
    kotlin = language_for("x.kt")
    assert kotlin is not None
    out = FileResults()
    scanner = Scanner(Policy(), Limits())
    scanner.scan_file(SourceFile("gone.kt", str(tmp_path / "gone.kt"), kotlin), out)
    scanner.scan_file(SourceFile("dir.kt", str(tmp_path / "dir.kt"), kotlin), out)
    assert skips(out.skipped) == [("gone.kt", "unreadable", False), ("dir.kt", "unreadable", False)]
    assert out.findings == []


def test_a_fifo_in_place_of_a_file_after_the_walk_is_skipped_not_waited_on(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "swapped.kt")
    kotlin = language_for("x.kt")
    assert kotlin is not None
    out = FileResults()
    source = SourceFile("swapped.kt", str(tmp_path / "swapped.kt"), kotlin)
    scanning = threading.Thread(target=Scanner(Policy(), Limits()).scan_file, args=(source, out))
    scanning.start()
    scanning.join(10)
    if scanning.is_alive():  # its open waits for a writer: be one, so that it ends
        os.close(os.open(tmp_path / "swapped.kt", os.O_WRONLY | os.O_NONBLOCK))
        scanning.join()
        pytest.fail("the scan waited on a FIFO nobody writes to")
    assert skips(out.skipped) == [("swapped.kt", "unreadable", False)]
    assert out.skipped[0].detail == "not a regular file"


def test_invalid_utf8_is_reported_and_still_scanned(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_bytes(b'# caf\xe9\nHOST = "77.88.8.8"\n')
    report = scan_tree(tmp_path, ScanOptions(jobs=1))
    assert skips(report.skipped) == [("bad.py", "invalid-utf8", True)]
    assert [(f.line, f.text, f.country) for f in report.findings] == [(2, "77.88.8.8", "RU")]


def test_minified_and_oversized_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "app.min.js").write_text("var a=1;" * 5000 + 'fetch("http://77.88.8.8/")\n')
    (tmp_path / "big.json").write_text(('{"a": "' + "x" * 8000 + '"}\n') * 10)
    (tmp_path / "ok.js").write_text('fetch("http://77.88.8.8/")\n')
    limits = Limits(max_file_bytes=60_000, max_line_chars=20_000)
    report = scan_tree(tmp_path, ScanOptions(jobs=1, limits=limits))
    assert skips(report.skipped) == [
        ("app.min.js", "minified", False),
        ("big.json", "too-large", False),
    ]
    assert [f.path for f in report.findings] == ["ok.js"]


def test_binary_file_with_a_source_name_is_reported_not_scanned(tmp_path: Path) -> None:
    (tmp_path / "blob.js").write_bytes(b"\x89PNG\x00\x01\xff" + b'fetch("http://77.88.8.8/")')
    report = scan_tree(tmp_path, ScanOptions(jobs=1))
    assert (report.findings, skips(report.skipped), report.files) == (
        [],
        [("blob.js", "binary", False)],
        0,
    )


URL = 'val u = "http://77.88.8.8/"\n'


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("le.kt", codecs.BOM_UTF16_LE + URL.encode("utf-16-le")),
        ("be.kt", codecs.BOM_UTF16_BE + URL.encode("utf-16-be")),
        ("nobom.kt", URL.encode("utf-16-le")),
        ("u32.kt", URL.encode("utf-32")),
        ("nul.kt", b"/* \x00 */ " + URL.encode()),
        ("bom8.kt", codecs.BOM_UTF8 + URL.encode()),
    ],
)
def test_utf16_sources_and_text_with_a_nul_are_scanned(
    tmp_path: Path, name: str, data: bytes
) -> None:
    """UTF-16 sources (as Xcode and Visual Studio may write them) and a source with a NUL
    in a comment were taken for binary: not scanned, not reported, the gate passed."""
    (tmp_path / name).write_bytes(data)
    report = scan_tree(tmp_path, ScanOptions(jobs=1))
    column = 18 if name == "nul.kt" else 10  # the BOM is not a column
    assert [(f.line, f.column, f.country) for f in report.findings] == [(1, column, "RU")]
    assert (report.skipped, report.files) == ([], 1)


def test_symlink_loop_is_reported_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.kt").write_text('val h = "77.88.8.8"\n')
    os.symlink("..", tmp_path / "src" / "loop")
    os.symlink("missing.kt", tmp_path / "src" / "dangling.kt")
    plain = scan_tree(tmp_path, ScanOptions(jobs=1))
    assert skips(plain.skipped) == [
        ("src/dangling.kt", "symlink", False),
        ("src/loop", "symlink", False),
    ]
    following = scan_tree(tmp_path, ScanOptions(jobs=1, walk=WalkOptions(follow_symlinks=True)))
    assert skips(following.skipped) == [
        ("src/dangling.kt", "unreadable", False),
        ("src/loop", "symlink-loop", False),
    ]
    assert [f.path for f in following.findings] == ["src/a.kt"]


def test_gitignore_and_vendored_folders(tmp_path: Path) -> None:
    line = 'val h = "77.88.8.8"\n'
    for rel in ("app/Main.kt", "build/Gen.kt", "node_modules/lib/x.js", "app/keep.kt", "app/x.kt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(line)
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / "app" / ".gitignore").write_text("*.kt\n!Main.kt\n!keep.kt\n")
    report = scan_tree(tmp_path, ScanOptions(jobs=1))
    assert [f.path for f in report.findings] == ["app/Main.kt", "app/keep.kt"]
    wide = scan_tree(
        tmp_path,
        ScanOptions(jobs=1, walk=WalkOptions(include_vendored=True, use_gitignore=False)),
    )
    assert [f.path for f in wide.findings] == [
        "app/Main.kt",
        "app/keep.kt",
        "app/x.kt",
        "build/Gen.kt",
        "node_modules/lib/x.js",
    ]


def test_comments_are_scanned_when_the_policy_says_so(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('# BACKUP = "77.88.8.8"\nurl = "http://x.org/#frag"\n')
    skip = scan_tree(tmp_path, ScanOptions(jobs=1))
    scan = scan_tree(tmp_path, ScanOptions(jobs=1, policy=Policy(scan_comments=True)))
    assert [(f.line, f.rule_id) for f in skip.findings] == [(2, "SV113")]
    assert [(f.line, f.rule_id) for f in scan.findings] == [(1, "SV103"), (2, "SV113")]


def test_a_line_limit_below_20000_judges_lines_not_the_whole_file(tmp_path: Path) -> None:
    """With ``--max-line-chars`` under 20,000 a short file of short lines was measured
    whole, called minified and not scanned, hiding the address on its second line."""
    (tmp_path / "a.kt").write_text('val a = 1\nval u = "http://77.88.8.8/"\n')
    (tmp_path / "b.kt").write_text("val b = " + "1" * 200 + "\n")
    limits = Limits(max_line_chars=30)
    report = scan_tree(tmp_path, ScanOptions(jobs=1, limits=limits))
    assert skips(report.skipped) == [("b.kt", "minified", False)]
    assert [(f.path, f.line) for f in report.findings] == [("a.kt", 2)]


def test_suppression_markers_count_only_in_comments_and_with_a_rule_named(
    tmp_path: Path,
) -> None:
    """A marker inside a string, or a list naming no rule (``[sv-103]``), silenced every
    rule on the line: an address could carry its own pass."""
    (tmp_path / "a.kt").write_text(
        'val a = "http://77.88.8.8/shardvault: ignore"\n'  # 1: in a string, not a comment
        'val b = "http://77.88.8.8/" // shardvault: ignore[sv-103]\n'  # 2: no rule named
        'val c = "http://77.88.8.8/" // shardvault: ignore[SV101]\n'  # 3: another rule
        'val d = "http://77.88.8.8/" // shardvault: ignore[sv103]\n'  # suppressed
        'val e = "http://77.88.8.8/" // shardvault: ignore\n'  # suppressed
        "// shardvault: ignore[SV103]\n"
        'val f = "http://77.88.8.8/"\n'  # suppressed from the line above
    )
    report = scan_tree(tmp_path, ScanOptions(jobs=1))
    assert [f.line for f in report.findings] == [1, 2, 3]
    assert [f.line for f in report.suppressed_inline] == [4, 5, 7]
