"""Human (table) and machine (JSON) renderings of a scan report.

Both name the geolocation data and its date, because a country is only as good as the
registry snapshot that placed it.
"""

from __future__ import annotations

import json

from shardvault.model import undecodable_escaped, undecodable_escaped_in
from shardvault.scan.runner import ScanReport

JSON_FORMAT = "shardvault-scan-report"
JSON_VERSION = 1


def render_json(report: ScanReport) -> str:
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "root": report.root,
        "geo_data": {
            "package": report.geo.package,
            "version": report.geo.version,
            "built": report.geo.built,
        },
        "findings": [f.to_dict() for f in report.findings],
        "skipped": [s.to_dict() for s in report.skipped],
        "summary": _summary(report),
    }
    return json.dumps(undecodable_escaped_in(doc), indent=2, ensure_ascii=False) + "\n"


def _summary(report: ScanReport) -> dict[str, object]:
    by_severity = {"high": 0, "medium": 0, "low": 0}
    for f in report.findings:
        by_severity[f.severity.label] += 1
    return {
        "files": report.files,
        "bytes": report.bytes,
        "seconds": round(report.seconds, 3),
        "findings": len(report.findings),
        "by_severity": by_severity,
        "suppressed_inline": len(report.suppressed_inline),
        "suppressed_baseline": len(report.suppressed_baseline),
        "skipped": len(report.skipped),
    }


def render_table(report: ScanReport) -> str:
    lines = [f"geo data: {report.geo.describe()}"]
    if report.findings:
        rows = [
            (
                f"{f.path}:{f.line}:{f.column}",
                f.severity.label,
                f"{f.rule_id} {f.rule.name}",
                f.country or "-",
                _clip(f.text, 60),
                f.explanation,
            )
            for f in report.findings
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(5)]
            lines.append("  ".join([*cells, row[5]]).rstrip())
    for s in report.skipped:
        state = "scanned with caveat" if s.scanned else "skipped"
        lines.append(f"{state}: {s.path} ({s.reason}: {s.detail})")
    summary = _summary(report)
    counts = summary["by_severity"]
    assert isinstance(counts, dict)
    mib = report.bytes / (1024 * 1024)
    lines.append(
        f"{len(report.findings)} finding(s): {counts['high']} high, {counts['medium']} medium, "
        f"{counts['low']} low; {len(report.suppressed_inline)} suppressed inline, "
        f"{len(report.suppressed_baseline)} by baseline; {report.files} files, {mib:.1f} MiB "
        f"in {report.seconds:.2f} s; {len(report.skipped)} skipped"
    )
    return undecodable_escaped("\n".join(lines)) + "\n"  # a name's bytes not UTF-8


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
