"""The safe recipe on top: walk, scan, apply the baseline, and return one report."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shardvault.errors import InvalidInput
from shardvault.scan.baseline import split_by_baseline
from shardvault.scan.engine import Limits, scan_files
from shardvault.scan.findings import Finding, Severity, SkippedFile
from shardvault.scan.geo import GeoDataInfo, geo_data_info
from shardvault.scan.policy import Policy
from shardvault.scan.walk import SourceFile, WalkOptions, walk_tree


@dataclass(frozen=True)
class ScanOptions:
    """How to scan; defaults suit CI on a 2-core machine."""

    policy: Policy = field(default_factory=Policy)
    walk: WalkOptions = field(default_factory=WalkOptions)
    limits: Limits = field(default_factory=Limits)
    jobs: int = 0  # 0: one per CPU
    baseline: Counter[str] | None = None


@dataclass(frozen=True)
class ScanReport:
    """Findings sorted by place; ``suppressed`` holds inline and baseline suppressions."""

    root: str
    findings: list[Finding]
    suppressed_inline: list[Finding]
    suppressed_baseline: list[Finding]
    skipped: list[SkippedFile]
    files: int
    bytes: int
    seconds: float
    geo: GeoDataInfo

    def failing(self, threshold: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= threshold]

    def all_findings(self) -> list[Finding]:
        """Every finding before suppression: what a new baseline accepts."""
        merged = self.findings + self.suppressed_baseline
        return sorted(merged, key=Finding.sort_key)


def scan_tree(
    root: Path, options: ScanOptions, clock: Callable[[], float] = time.perf_counter
) -> ScanReport:
    """Scan ``root`` (a folder or one file); a missing root is ``InvalidInput``."""
    if not root.exists():
        raise InvalidInput(f"no such file or directory: {root}")
    started = clock()
    skipped: list[SkippedFile] = []

    def sources() -> Iterator[SourceFile]:
        for item in walk_tree(root, options.walk):
            if isinstance(item, SkippedFile):
                skipped.append(item)
            else:
                yield item

    jobs = options.jobs if options.jobs > 0 else (os.cpu_count() or 1)
    results = scan_files(sources(), options.policy, options.limits, jobs)
    findings = sorted(results.findings, key=Finding.sort_key)
    known: list[Finding] = []
    if options.baseline is not None:
        findings, known = split_by_baseline(findings, options.baseline)
    return ScanReport(
        root=str(root),
        findings=findings,
        suppressed_inline=sorted(results.suppressed, key=Finding.sort_key),
        suppressed_baseline=known,
        skipped=sorted(skipped + results.skipped, key=lambda s: (s.path, s.reason)),
        files=results.files,
        bytes=results.bytes,
        seconds=clock() - started,
        geo=geo_data_info(),
    )
