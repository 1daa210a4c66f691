"""The transparency report, computed from the audit log alone and tied to signed heads.

A *request* is one request id of one principal in a cell's log: the embedding
program names its requests, and an id another principal used (a foreign
authority's under a service's) is another request, never merged into that one.
Its entries from the policy
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
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shardvault.audit import ENTRY_VERSION, AuditEntry, Checkpoint, format_time
from shardvault.audit.entry import check_counted_fields
from shardvault.errors import InvalidInput
from shardvault.model import shown

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
    end: str | None  # None: open (--to 9999-12-31)
    rows: tuple[ReportRow, ...]
    heads: tuple[HeadRef, ...]


def period(start: str, end: str) -> tuple[str, str | None]:
    """``--from`` and ``--to`` days (inclusive) as RFC 3339 bounds ``[start, end)``;
    ``--to 9999-12-31`` as an open end, None: the day after it, in year 10000, has no
    RFC 3339 form (and as text would sort before every entry's time)."""
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError:
        raise InvalidInput(f"dates must be YYYY-MM-DD (got {shown(start)}, {shown(end)})") from None
    if last < first:
        raise InvalidInput(f"--to {end} is before --from {start}")
    lo = format_time(datetime(first.year, first.month, first.day, tzinfo=UTC))
    if last == date.max:
        return lo, None
    hi = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    return lo, format_time(hi)


_Fact = tuple[object, str, str, str, Mapping[str, object]]
"""What counting needs of one entry: (stage, request, time, decision, details)."""


def _request(principal: str, request_id: str) -> str:
    """One key for a principal's request: neither holds a control character, so the
    NUL between them cannot be one of theirs. One string, not a pair: fewer bytes
    for each of a million requests held."""
    return f"{principal}\x00{request_id}"


def _facts(entries: Iterable[AuditEntry]) -> Iterator[_Fact]:
    for entry in entries:
        details = entry.details
        request = _request(entry.principal, entry.request_id)
        yield details.get("stage"), request, entry.time, entry.decision, details


def _raw_facts(raws: Iterable[bytes]) -> Iterator[_Fact]:
    """`_facts` of canonical entry bytes, without building each `AuditEntry`.

    Building and validating each entry was three quarters of a report's time (29
    of 37 µs per entry). The fields counted are checked as the strict parse checks
    them (version, time, request id, decision, details); an entry that fails is read the
    strict way, which raises `IntegrityError`. The rest of an entry (its other
    fields, its canonical form) is not checked here: a log whose bytes were
    altered that way may be counted where the strict parse refuses, and fails
    `audit verify`, which rehashes every entry against the signed head.
    """
    for raw in raws:
        try:
            doc = json.loads(raw)
            details, who, rid, when, decided = (
                doc[k] for k in ("details", "principal", "request_id", "time", "decision")
            )
            version = doc["v"]
            check_counted_fields(when, who, rid, details)
            stage = details.get("stage")
            if not (type(version) is int and version == ENTRY_VERSION and decided in _STRENGTH):
                raise ValueError("not the fields the writer writes")
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput):
            yield from _facts([AuditEntry.from_bytes(raw)])
            continue
        yield stage, _request(who, rid), when, decided, details


def count_requests(entries: Iterable[AuditEntry], start: str, end: str | None) -> Counter[Key]:
    """Requests whose first entry falls in ``[start, end)``, by requester and decision."""
    return _count(_facts(entries), start, end)


def count_request_bytes(raws: Iterable[bytes], start: str, end: str | None) -> Counter[Key]:
    """`count_requests` of entries' canonical bytes (a log's or an export's lines)."""
    return _count(_raw_facts(raws), start, end)


_DECISIONS = sorted(_STRENGTH, key=_STRENGTH.__getitem__)


class _Request:
    """A request that started in the period: its strongest decision and requester."""

    __slots__ = ("strength", "who")

    def __init__(self) -> None:
        self.strength = 0
        self.who: tuple[str, str, str] | None = None


def _count(facts: Iterable[_Fact], start: str, end: str | None) -> Counter[Key]:
    """Count by each request's first entry. Only requests that start in the period keep
    more than their id (a million requests held 560 MiB), and requesters are held once."""
    requests: dict[str, _Request | None] = {}  # None: started outside the period
    requesters: dict[tuple[str, str, str], tuple[str, str, str]] = {}
    for stage, key, when, decided, details in facts:
        if stage not in COUNTED_STAGES:
            continue
        if key not in requests:
            within = start <= when and (end is None or when < end)
            requests[key] = _Request() if within else None
        request = requests[key]
        if request is None:
            continue
        request.strength = max(request.strength, _STRENGTH[decided])
        if stage == "policy" and request.who is None:
            who = (
                str(details.get("kind") or "unknown"),
                str(details.get("authority_country") or "-"),
                str(details.get("data_class") or "protected"),
            )
            request.who = requesters.setdefault(who, who)
    counts: Counter[Key] = Counter()
    for request in requests.values():
        if request is not None:
            kind, country, data_class = request.who or ("unknown", "-", "protected")
            counts[(kind, country, data_class, _DECISIONS[request.strength])] += 1
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
    start: str, end: str | None, per_cell: list[tuple[HeadRef, Counter[Key]]]
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
    "count_request_bytes",
    "count_requests",
    "head_ref",
    "period",
    "transparency_report",
]


def transparency_report(governance: object, start: str, end: str) -> TransparencyReport:
    """Sign and cosign a fresh head per cell, then count the requests under it."""
    from shardvault.governance.layer import Governance

    assert isinstance(governance, Governance)
    lo, hi = period(start, end)
    per_cell = []
    for code in governance.jurisdictions:
        ref = head_ref(code, governance.publish_head(code).to_bytes())
        log = governance.cell(code).log
        per_cell.append((ref, count_request_bytes(log.iter_entry_bytes(0, ref.size), lo, hi)))
    return build_report(lo, hi, per_cell)
