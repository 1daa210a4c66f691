"""End to end through ``shardvault scan``: exit codes, one-line errors, the baseline workflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.scan.helpers import FIXTURES, POLICY

from shardvault.cli.app import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["scan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_findings_at_or_above_fail_on_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    tree = str(FIXTURES / "config")
    code, out, err = run(capsys, tree, "--policy", str(POLICY), "--jobs", "1")
    assert code == 1
    assert err == "error: 3 finding(s) at or above --fail-on high\n"
    assert out.startswith("geo data: iptocc ")
    code, _, _ = run(capsys, str(FIXTURES / "objc" / "Paste.m"), "--policy", str(POLICY))
    assert code == 1  # a single file as the root, with a clipboard read


def test_no_findings_at_threshold_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(FIXTURES / "c"), "--fail-on", "high", "--format", "json")
    doc = json.loads(out)
    assert code == 0  # no policy: public addresses are low
    assert [f["rule_id"] for f in doc["findings"]] == ["SV103", "SV103"]
    assert doc["geo_data"]["package"] == "iptocc"
    assert len(doc["geo_data"]["built"]) == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/tree"], "error: no such file or directory: /nonexistent/tree\n"),
        (
            [".", "--fail-on", "urgent"],
            "error: --fail-on: unknown severity 'urgent' (use high, medium or low)\n",
        ),
        ([".", "--format", "xml"], "error: --format must be table, json or sarif, not 'xml'\n"),
        ([".", "--jobs", "-1"], "error: --jobs must be 0 (one per CPU) or more\n"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, *args)
    assert (code, out, err) == (2, "", message)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version = 1\n[jurisdictions]\nallowed = ['cn']\n", "is not a jurisdiction code"),
        ("version = 0\n", "has version 0; this reader knows version 1"),  # 3: NewerFormat
        # emptied or cut short: it said "version must be 1, got None", not what to do
        ("# cut short\n", "has no version: restore it from a backup"),
        ("version = 1\n[jurisdictions\n", "is not valid TOML"),
    ],
)
def test_bad_policy_file_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, fragment: str
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    code, out, err = run(capsys, str(FIXTURES), "--policy", str(policy))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_missing_policy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, str(FIXTURES), "--policy", str(tmp_path / "none.toml"))
    assert code == 2 and err.startswith("error: cannot read policy file")


def test_baseline_workflow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tree = tmp_path / "app"
    shutil.copytree(FIXTURES / "kotlin", tree)
    baseline = tmp_path / "baseline.json"
    common = ["--policy", str(POLICY), "--jobs", "1", "--fail-on", "low"]

    code, _, err = run(capsys, str(tree), *common, "--write-baseline", str(baseline))
    assert (code, err) == (0, f"wrote 5 finding(s) to baseline {baseline}\n")
    code, out, _ = run(capsys, str(tree), *common, "--baseline", str(baseline), "--format", "json")
    assert code == 0
    assert json.loads(out)["summary"]["suppressed_baseline"] == 5

    source = tree / "Net.kt"
    lines = source.read_text().splitlines(keepends=True)
    lines.insert(0, "// moved everything down a line\n")
    lines.append('val added = "77.88.8.8"\n')
    lines.append(lines[11])  # a second copy of an accepted line is new
    source.write_text("".join(lines))
    code, out, err = run(
        capsys, str(tree), *common, "--baseline", str(baseline), "--format", "json"
    )
    doc = json.loads(out)
    assert code == 1 and err == "error: 2 finding(s) at or above --fail-on low\n"
    assert [(f["line"], f["rule_id"], f["text"]) for f in doc["findings"]] == [
        (23, "SV101", "77.88.8.8"),
        (24, "SV101", '"114.114" + ".114.114"'),
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "something-else"}',
        # true == 1 and 1.0 == 1 in Python: either was read as a version 1 baseline
        '{"format": "shardvault-scan-baseline", "version": true, "findings": []}',
        '{"format": "shardvault-scan-baseline", "version": 1.0, "findings": []}',
    ],
    ids=["format", "true", "1.0"],
)
def test_bad_baseline_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    baseline = tmp_path / "b.json"
    baseline.write_text(text)
    code, _, err = run(capsys, str(FIXTURES), "--baseline", str(baseline))
    assert code == 2
    assert (
        err == f"error: baseline {baseline} is not a shardvault-scan-baseline file of version 1\n"
    )


def test_an_output_is_checked_before_the_scan_and_written_whole(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no deployment here: nothing of one to keep out
    monkeypatch.delenv("SHARDVAULT_CONFIG", raising=False)
    tree = str(FIXTURES / "c")
    report = tmp_path / "report.json"
    assert run(capsys, tree, "--format", "json", "-o", str(report))[0] == 0
    assert json.loads(report.read_text())["summary"]
    assert not list(tmp_path.glob(".*partial*"))  # written beside it, then renamed
    scanned: list[object] = []
    monkeypatch.setattr("shardvault.scan.scan_tree", lambda *a: scanned.append(a))
    for option in ("--output", "--write-baseline"):
        code, _, err = run(capsys, tree, option, str(tmp_path))
        assert (code, err) == (2, f"error: {option} {tmp_path} is a directory; give a file name\n")
        code, _, err = run(capsys, tree, option, str(tmp_path / "missing" / "r"))
        assert code == 2 and err.startswith(f"error: cannot write {tmp_path}/missing/r")
    assert scanned == []  # refused before scanning


@pytest.mark.parametrize("option", ["--output", "--write-baseline"])
def test_a_full_disk_is_exit_1_with_its_remedy(
    capsys: pytest.CaptureFixture[str], option: str
) -> None:
    # a baseline that could not be written was exit 2 whatever the reason
    code, _, err = run(capsys, str(FIXTURES / "c"), option, "/dev/full")
    assert (code, err) == (
        1,
        "error: cannot write /dev/full: No space left on device; make room and retry\n",
    )


def test_a_scan_that_read_no_source_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty tree, a file of no known language, a tree all gitignored or minified
    passed the gate (exit 0) having scanned nothing."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("http://77.88.8.8/\n")
    (tmp_path / "min").mkdir()
    (tmp_path / "min" / "a.js").write_text("x=1;" * 6000 + "\n")
    for root in ("empty", "notes.txt", "min"):
        code, _, err = run(capsys, str(tmp_path / root), "--jobs", "1")
        assert code == 2, root
        assert err.startswith(f"error: no source file scanned under {tmp_path / root} ")
    baseline = tmp_path / "b.json"
    code, _, _ = run(capsys, str(tmp_path / "empty"), "--write-baseline", str(baseline))
    assert (code, baseline.exists()) == (2, False)
