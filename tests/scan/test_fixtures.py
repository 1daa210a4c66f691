"""Each language's fixture tree yields exactly these findings under tests/scan/policy.toml.

The fixtures mix true positives with look-alikes that must not be flagged: versions in a
version context, documentation/private/loopback ranges, OIDs, XML namespace URLs, an
allowed domain, commented-out addresses (the policy skips comments) and an inline
suppression.
"""

from __future__ import annotations

import pytest
from tests.scan.helpers import FIXTURES, Row, rows, scan

EXPECTED: dict[str, list[Row]] = {
    "kotlin": [
        ("Net.kt", 10, 17, "SV101", "RU"),  # IP in URL with port
        ("Net.kt", 11, 18, "SV101", "CN"),  # "114.114" + ".114.114"
        ("Net.kt", 13, 29, "SV201", None),  # cm.primaryClip read
        ("Net.kt", 16, 11, "SV203", None),  # cm.primaryClip = ... write
        ("Net.kt", 17, 12, "SV202", None),  # addPrimaryClipChangedListener
    ],
    "java": [
        ("Beacon.java", 7, 32, "SV101", "CN"),
        ("Beacon.java", 8, 33, "SV101", "RU"),  # 0x4D580808 == 77.88.8.8
        ("Beacon.java", 12, 16, "SV201", None),  # hasPrimaryClip
        ("Beacon.java", 13, 23, "SV201", None),  # getPrimaryClip
    ],
    "swift": [
        ("Paste.swift", 4, 28, "SV111", "CN"),  # api.baidu.com in URL
        ("Paste.swift", 5, 20, "SV103", "IE"),  # bracketed IPv6 with port, EU: allowed
        ("Paste.swift", 9, 16, "SV201", None),
        ("Paste.swift", 13, 9, "SV203", None),
    ],
    "objc": [
        ("Paste.m", 5, 34, "SV201", None),
        ("Paste.m", 7, 39, "SV102", "AU"),
    ],
    "web": [
        ("app.ts", 3, 14, "SV102", "US"),  # "8.8.8.8:53"
        ("app.ts", 7, 29, "SV201", None),  # navigator.clipboard.readText
        ("app.ts", 8, 16, "SV111", None),  # disallowed domain
        ("app.ts", 12, 10, "SV202", None),  # paste listener
        ("app.ts", 12, 57, "SV201", None),  # clipboardData.getData
        ("app.ts", 13, 11, "SV203", None),  # writeText
        ("app.ts", 14, 12, "SV201", None),  # React Native Clipboard.getString
    ],
    "dart": [
        ("clip.dart", 4, 22, "SV201", None),
        ("clip.dart", 5, 26, "SV111", "RU"),
        ("clip.dart", 9, 25, "SV203", None),
    ],
    "python": [
        ("tool.py", 8, 9, "SV103", "DE"),
        ("tool.py", 13, 12, "SV201", None),  # pyperclip.paste
        ("tool.py", 13, 36, "SV201", None),  # tkinter clipboard_get
        ("tool.py", 17, 5, "SV203", None),  # pyperclip.copy
    ],
    "go": [
        ("dial.go", 10, 30, "SV101", "CN"),
        ("dial.go", 12, 13, "SV201", None),
    ],
    "c": [
        ("net.c", 7, 39, "SV101", "RU"),
        ("net.c", 8, 34, "SV102", "US"),  # htonl(134744072) == 8.8.8.8
    ],
    "config": [
        (".env", 1, 10, "SV111", "RU"),  # bare hostname on the policy's list
        ("Info.plist", 8, 13, "SV101", "CN"),
        ("app.properties", 2, 9, "SV102", "US"),  # http://134744072/ integer host
        ("app.yaml", 1, 9, "SV101", "RU"),
        ("app.yaml", 3, 11, "SV103", "IE"),
        ("settings.json", 2, 16, "SV112", "US"),
    ],
}


@pytest.mark.parametrize("language", sorted(EXPECTED))
def test_fixture_tree_yields_exactly_the_expected_findings(language: str) -> None:
    report = scan(FIXTURES / language)
    assert rows(report) == EXPECTED[language]
    assert report.skipped == []


def test_every_fixture_tree_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(EXPECTED)


def test_inline_suppression_moves_the_finding_aside() -> None:
    report = scan(FIXTURES / "kotlin")
    assert [(f.line, f.rule_id) for f in report.suppressed_inline] == [(20, "SV103")]


def test_parallel_scan_finds_the_same_as_serial() -> None:
    serial = scan(FIXTURES, jobs=1)
    parallel = scan(FIXTURES, jobs=2)
    assert rows(parallel) == rows(serial)
    expected_total = sum(len(v) for v in EXPECTED.values())
    assert len(serial.findings) == expected_total
