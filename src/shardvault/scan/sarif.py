"""SARIF 2.1.0 output, so code-scanning tools can show the findings in review.

Suppressed findings stay in the log with a ``suppressions`` entry (``inSource`` for an
inline comment, ``external`` for the baseline), as SARIF intends, and skipped files
become tool execution notifications rather than vanishing.
"""

from __future__ import annotations

import json
from importlib import metadata
from urllib.parse import quote

from shardvault.model import undecodable_escaped_in
from shardvault.scan.findings import RULES, Finding, Severity
from shardvault.scan.runner import ScanReport

SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
_LEVEL = {Severity.HIGH: "error", Severity.MEDIUM: "warning", Severity.LOW: "note"}
_SECURITY_SEVERITY = {Severity.HIGH: "8.0", Severity.MEDIUM: "5.0", Severity.LOW: "2.0"}
_RULE_INDEX = {rule_id: i for i, rule_id in enumerate(RULES)}


def render_sarif(report: ScanReport) -> str:
    try:
        version = metadata.version("shardvault")
    except metadata.PackageNotFoundError:
        version = "0"
    results = [_result(f, None) for f in report.findings]
    results += [_result(f, "inSource") for f in report.suppressed_inline]
    results += [_result(f, "external") for f in report.suppressed_baseline]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "shardvault-scan",
                        "version": version,
                        "rules": [_rule(rule_id) for rule_id in RULES],
                    }
                },
                "columnKind": "unicodeCodePoints",
                "originalUriBaseIds": {"SRCROOT": {"description": {"text": report.root}}},
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": [
                            {
                                "level": "warning" if not s.scanned else "note",
                                "message": {"text": f"{s.reason}: {s.detail}"},
                                "locations": [_location(s.path, None, None)],
                            }
                            for s in report.skipped
                        ],
                    }
                ],
                "results": results,
                "properties": {"geoData": report.geo.describe()},
            }
        ],
    }
    return json.dumps(undecodable_escaped_in(log), indent=2, ensure_ascii=False) + "\n"


def _rule(rule_id: str) -> dict[str, object]:
    rule = RULES[rule_id]
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        "properties": {
            "security-severity": _SECURITY_SEVERITY[rule.severity],
            "tags": ["security", "privacy"],
        },
    }


def _location(path: str, line: int | None, column: int | None) -> dict[str, object]:
    """A location whose ``uri`` is the path percent-encoded, as SARIF requires a URI
    reference: raw, ``a#b.kt`` named ``a`` with a fragment and ``a:b.kt`` a scheme.
    Encoded from the name's bytes, so a byte that is not UTF-8 is kept (``%FF``)."""
    uri = quote(path.encode("utf-8", "surrogateescape"), safe="/")
    physical: dict[str, object] = {"artifactLocation": {"uri": uri, "uriBaseId": "SRCROOT"}}
    if line is not None and column is not None:
        physical["region"] = {"startLine": line, "startColumn": column}
    return {"physicalLocation": physical}


def _result(finding: Finding, suppression: str | None) -> dict[str, object]:
    text = finding.explanation + (f" [{finding.country}]" if finding.country else "")
    result: dict[str, object] = {
        "ruleId": finding.rule_id,
        "ruleIndex": _RULE_INDEX[finding.rule_id],
        "level": _LEVEL[finding.severity],
        "message": {"text": f"{text}: {finding.text}"},
        "locations": [_location(finding.path, finding.line, finding.column)],
        "partialFingerprints": {"shardvaultFingerprint/v1": finding.fingerprint},
        "properties": {"severity": finding.severity.label, "country": finding.country},
    }
    if suppression is not None:
        result["suppressions"] = [{"kind": suppression}]
    return result
