"""Source scanner: proves an app sends no data to a hard-coded foreign address and does not
read the clipboard behind the user's back (issue #4). See ``docs/scanner.md``."""

from __future__ import annotations

from shardvault.scan.baseline import baseline_text, load_baseline, write_baseline
from shardvault.scan.engine import Limits
from shardvault.scan.findings import RULES, Finding, Severity, SkippedFile
from shardvault.scan.policy import Policy, load_policy
from shardvault.scan.runner import ScanOptions, ScanReport, scan_tree
from shardvault.scan.walk import WalkOptions

__all__ = [
    "RULES",
    "Finding",
    "Limits",
    "Policy",
    "ScanOptions",
    "ScanReport",
    "Severity",
    "SkippedFile",
    "WalkOptions",
    "baseline_text",
    "load_baseline",
    "load_policy",
    "scan_tree",
    "write_baseline",
]
