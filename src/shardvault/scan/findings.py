"""What the scanner reports: findings, the rule catalogue, and files it could not scan.

Every rule the scanner can raise is listed in ``RULES`` so the reports (table, JSON,
SARIF) and the docs describe the same set, and a finding never carries a free-form id.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass


class Severity(enum.IntEnum):
    """Ordered so ``finding.severity >= fail_on`` decides the exit code."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r} (use high, medium or low)") from None


@dataclass(frozen=True)
class Rule:
    """One check: a stable id for suppressions and SARIF, a name, a default severity."""

    id: str
    name: str
    severity: Severity
    summary: str


RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("SV101", "ip-disallowed", Severity.HIGH,
             "Hard-coded IP address placed in a jurisdiction the policy disallows."),
        Rule("SV102", "ip-foreign", Severity.MEDIUM,
             "Hard-coded IP address outside the policy's allowed jurisdictions."),
        Rule("SV103", "ip-public", Severity.LOW,
             "Hard-coded public IP address; the policy raises no objection to its country."),
        Rule("SV111", "host-disallowed", Severity.HIGH,
             "Hostname on the policy's disallowed list or in a disallowed jurisdiction."),
        Rule("SV112", "host-foreign", Severity.MEDIUM,
             "Hostname known to be in a jurisdiction outside the allowed ones."),
        Rule("SV113", "host-unvetted", Severity.LOW,
             "Hostname not on the policy's allowed list; nothing known about where it is."),
        Rule("SV201", "clipboard-read", Severity.HIGH,
             "Reads the clipboard: user data may leave the app without the user knowing."),
        Rule("SV202", "clipboard-listen", Severity.HIGH,
             "Listens for clipboard changes or paste events to read them."),
        Rule("SV203", "clipboard-write", Severity.LOW,
             "Writes to the clipboard; reported so reviewers see every clipboard use."),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One match: where it is, what it is, and why it matters.

    ``context`` is the stripped source line; it feeds the fingerprint so a baseline
    survives lines moving up or down, and is not printed.
    """

    rule_id: str
    severity: Severity
    path: str
    line: int
    column: int
    text: str
    explanation: str
    country: str | None = None
    context: str = ""

    @property
    def rule(self) -> Rule:
        return RULES[self.rule_id]

    @property
    def fingerprint(self) -> str:
        """Stable across line shifts: rule, file, matched text and the line's content."""
        material = "\0".join((self.rule_id, self.path, self.text, self.context))
        return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.column, self.rule_id)

    def to_dict(self) -> dict[str, object]:
        return {
            "rule_id": self.rule_id,
            "rule": self.rule.name,
            "severity": self.severity.label,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "text": self.text,
            "country": self.country,
            "explanation": self.explanation,
            "fingerprint": self.fingerprint,
        }


class SkipReason(enum.StrEnum):
    """Why a file was not scanned (or scanned with a caveat); shown in every report."""

    UNREADABLE = "unreadable"
    TOO_LARGE = "too-large"
    MINIFIED = "minified"
    INVALID_UTF8 = "invalid-utf8"
    BINARY = "binary"
    SYMLINK = "symlink"
    SYMLINK_LOOP = "symlink-loop"


@dataclass(frozen=True)
class SkippedFile:
    """A file the scanner could not fully scan, and why; never a crash."""

    path: str
    reason: SkipReason
    detail: str
    scanned: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "reason": str(self.reason),
            "detail": self.detail,
            "scanned": self.scanned,
        }
