"""The transparency report, computed from the audit log alone and tied to signed heads.

A *request* is one request id in a cell's log. Its entries from the policy
decision (``stage = policy``) and the key custodian (``stage = custodian``)
give its final decision: ``deny`` if anything denied it, else
``approval-required`` if it was sent for approval, else ``allow``. Its requester
kind, authority country and data class are the ones the policy entry recorded
(``details``); its time is the time of its first entry. A request retried
with a met approval has a new request id, so it is counted again, as allowed.

Each cell's figures are computed from the entries under a head that the cell
signs and the partner cosigns at report time; the report carries that head
(origin, size, root), so anyone holding an export can recompute every figure
and check it against the same head.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shardvault.audit import AuditEntry, Checkpoint, format_time
from shardvault.errors import InvalidInput

_STRENGTH = {"allow": 0, "approval-required": 1, "deny": 2}
COUNTED_STAGES = frozenset({"policy", "custodian"})

Key = tuple[str, str, str, str]
"""(requester kind, authority country or '-', data class, decision)."""


@dataclass(frozen=True, slots=True)
class HeadRef:
    cell: str
    origin: str
    size: int
    root: str
    note: str


@dataclass(frozen=True, slots=True)
class ReportRow:
    cell: str
    requester_kind: str
    authority_country: str
    data_class: str
    decision: str
    requests: int
    head_size: int


@dataclass(frozen=True, slots=True)
class TransparencyReport:
    start: str
    end: str
    rows: tuple[ReportRow, ...]
    heads: tuple[HeadRef, ...]


def period(start: str, end: str) -> tuple[str, str]:
    """``--from`` and ``--to`` days (inclusive) as RFC 3339 bounds ``[start, end)``."""
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError:
        raise InvalidInput(f"dates must be YYYY-MM-DD (got {start!r}, {end!r})") from None
    if last < first:
        raise InvalidInput(f"--to {end} is before --from {start}")
    lo = datetime(first.year, first.month, first.day, tzinfo=UTC)
    hi = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    return format_time(lo), format_time(hi)


def count_requests(entries: Iterable[AuditEntry], start: str, end: str) -> Counter[Key]:
    """Requests whose first entry falls in ``[start, end)``, by requester and decision."""
    first_time: dict[str, str] = {}
    decision: dict[str, str] = {}
    who: dict[str, tuple[str, str, str]] = {}
    for entry in entries:
        stage = entry.details.get("stage")
        if stage not in COUNTED_STAGES:
            continue
        rid = entry.request_id
        first_time.setdefault(rid, entry.time)
        if _STRENGTH[entry.decision] >= _STRENGTH.get(decision.get(rid, "allow"), 0):
            decision[rid] = entry.decision
        if stage == "policy" and rid not in who:
            who[rid] = (
                str(entry.details.get("kind") or "unknown"),
                str(entry.details.get("authority_country") or "-"),
                str(entry.details.get("data_class") or "protected"),
            )
    counts: Counter[Key] = Counter()
    for rid, when in first_time.items():
        if start <= when < end:
            kind, country, data_class = who.get(rid, ("unknown", "-", "protected"))
            counts[(kind, country, data_class, decision[rid])] += 1
    return counts


def head_ref(cell: str, note_text: bytes) -> HeadRef:
    text = note_text.decode("utf-8")
    checkpoint = Checkpoint.parse(text[: text.index("\n\n") + 1])
    return HeadRef(
        cell,
        checkpoint.origin,
        checkpoint.size,
        base64.b64encode(checkpoint.root_hash).decode("ascii"),
        text,
    )


def build_report(
    start: str, end: str, per_cell: list[tuple[HeadRef, Counter[Key]]]
) -> TransparencyReport:
    rows = [
        ReportRow(head.cell, *key, requests=count, head_size=head.size)
        for head, counts in per_cell
        for key, count in sorted(counts.items())
    ]
    return TransparencyReport(start, end, tuple(rows), tuple(head for head, _ in per_cell))


__all__ = [
    "COUNTED_STAGES",
    "HeadRef",
    "ReportRow",
    "TransparencyReport",
    "build_report",
    "count_requests",
    "head_ref",
    "period",
    "transparency_report",
]


def transparency_report(governance: object, start: str, end: str) -> TransparencyReport:
    """Sign and cosign a fresh head per cell, then count the requests under it."""
    from shardvault.governance.guard import Governance

    assert isinstance(governance, Governance)
    lo, hi = period(start, end)
    per_cell = []
    for code in governance.jurisdictions:
        ref = head_ref(code, governance.publish_head(code).to_bytes())
        log = governance.cell(code).log
        entries = (AuditEntry.from_bytes(raw) for raw in log.iter_entry_bytes(0, ref.size))
        per_cell.append((ref, count_requests(entries, lo, hi)))
    return build_report(lo, hi, per_cell)
