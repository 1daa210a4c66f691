"""Shared fixtures-on-disk helpers for the scanner tests."""

from __future__ import annotations

from pathlib import Path

from shardvault.scan import ScanOptions, ScanReport, load_policy, scan_tree

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
POLICY = HERE / "policy.toml"

Row = tuple[str, int, int, str, str | None]


def scan(root: Path, jobs: int = 1, **kwargs: object) -> ScanReport:
    options = ScanOptions(policy=load_policy(POLICY), jobs=jobs, **kwargs)  # type: ignore[arg-type]
    return scan_tree(root, options)


def rows(report: ScanReport) -> list[Row]:
    return [(f.path, f.line, f.column, f.rule_id, f.country) for f in report.findings]
