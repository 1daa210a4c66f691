"""Audit entries: one access decision as versioned, canonical JSON.

The bytes of an entry are what the Merkle tree commits to, so they must be
reproducible by anyone: RFC 8785-style canonical JSON (sorted keys, no
whitespace, UTF-8, integers only). A reader refuses a version it does not know,
unknown fields, duplicate keys and any non-canonical encoding, because two
encodings of one entry would let an operator change the bytes without changing
the meaning, or the other way round.

Subject ids and object keys are personal data; an audit log is kept for years
and shown to outsiders. They are carried as keyed HMAC-SHA256 pseudonyms under a
per-cell audit key (`AuditHasher`): an auditor holding the key can check that a
given user's accesses are in the log, nobody else can read them.
"""

from __future__ import annotations

import hmac
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from shardvault.compact_json import one_shot
from shardvault.errors import IntegrityError, InvalidInput
from shardvault.slot_init import slot_init

ENTRY_VERSION = 1
DECISIONS = frozenset({"allow", "deny", "approval-required"})
PSEUDONYM_PREFIX = "hmac-sha256:"
MAX_ENTRY_BYTES = 64 * 1024
_SAFE_INT = 2**53 - 1

_FIELDS = (
    "time",
    "request_id",
    "principal",
    "tenant",
    "action",
    "resource",
    "purpose",
    "decision",
    "rule",
    "result",
)
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)  # one spelling
_FORBIDDEN = re.compile(r"[\x00-\x1f\ud800-\udfff]")  # control characters, lone surrogates
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_RECENT_PSEUDONYMS = 4096  # per hasher; cleared when full
_TEXTS = operator.attrgetter(*_FIELDS[1:])  # every text field but the time, in one call

DetailValue = str | int | bool | None


def format_time(at: datetime) -> str:
    """RFC 3339 in UTC with microseconds: one spelling per instant, so entries are canonical."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput("audit time must be timezone-aware (pass a UTC datetime)")
    return at.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"  # drop +00:00


def entry_time(seconds: float) -> str:
    """``format_time(datetime.fromtimestamp(seconds, UTC))``, spelt without the datetime:
    every entry is stamped, and that route cost a get about 20 k instructions, this one
    about 4 k. The microseconds are rounded as ``fromtimestamp`` rounds them (the
    fraction alone, half to even, carrying into the second); the second's text is
    `format_time`'s own, made once a second."""
    fraction, whole = math.modf(seconds)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro, whole = micro - 1_000_000, whole + 1
    elif micro < 0:
        micro, whole = micro + 1_000_000, whole - 1
    return f"{_second_text(whole)}.{micro:06d}Z"


@lru_cache(maxsize=64)
def _second_text(whole: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole POSIX second, as `format_time` spells it."""
    return format_time(datetime.fromtimestamp(whole, UTC))[:19]


def _check_time(value: str) -> None:
    if not isinstance(value, str) or _TIME.fullmatch(value) is None:
        raise InvalidInput(
            f"audit time {value!r} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS.ffffffZ)"
        )
    if not _real_second(value[:19]):
        raise InvalidInput(f"audit time {value!r} is not a real date and time")


@lru_cache(maxsize=256)
def _real_second(stamp: str) -> bool:
    """Whether ``YYYY-MM-DDTHH:MM:SS`` names a real second (entries of one second share it)."""
    try:
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"audit field {name!r} must be a non-empty string")
    if _FORBIDDEN.search(value):
        raise InvalidInput(f"audit field {name!r} contains a control character or a lone surrogate")


def _check_details(details: Mapping[str, DetailValue]) -> None:
    # Types are part of the cache key: 1, 1.0 and True are equal but not all
    # allowed, and a str subclass may claim equality with a name it does not spell.
    items = tuple((key, type(key), value, type(value)) for key, value in details.items())
    try:
        _check_detail_items_cached(items)
    except TypeError:  # an unhashable value (a list, an object): check it uncached
        _check_detail_items(items)


def _check_detail_items(items: tuple[tuple[str, type, DetailValue, type], ...]) -> None:
    """Raise on the first bad detail."""
    for key, _, value, _ in items:
        if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
            raise InvalidInput(f"audit detail name {key!r}: use lower-case letters, digits, '_'")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if abs(value) > _SAFE_INT:
                raise InvalidInput(f"audit detail {key!r}: integer out of the JSON-safe range")
        elif isinstance(value, str):
            if _FORBIDDEN.search(value):
                raise InvalidInput(f"audit detail {key!r} contains a control character")
        else:
            raise InvalidInput(
                f"audit detail {key!r}: only strings, integers, booleans and null are allowed"
            )


# Guards write the same few details (stage, jurisdiction, data class, kind,
# location) on every entry. A raise is not cached: a bad detail is refused every time.
_check_detail_items_cached = lru_cache(maxsize=4096)(_check_detail_items)


def check_counted_fields(
    time: object, principal: object, request_id: object, details: object
) -> None:
    """The strict parse's checks of an entry's time, principal, request id and details,
    for a reader that takes only those of its JSON (the transparency report); `InvalidInput`."""
    _check_time(time)  # type: ignore[arg-type]  # checks the type too
    _check_text("principal", principal)
    _check_text("request_id", request_id)
    if not isinstance(details, dict):
        raise InvalidInput("audit entry 'details' must be an object")
    _check_details(details)


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)  # made once: json.dumps with options builds an encoder per call
_canonical_text = one_shot(_CANONICAL)  # and its C encoder once too: every entry uses it


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """RFC 8785-style bytes for the restricted JSON subset entries use (no floats)."""
    return _canonical_text(value).encode("utf-8")


@slot_init
@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One access decision. Every field is already safe to show an outsider."""

    time: str
    request_id: str
    principal: str
    tenant: str
    action: str
    resource: str
    purpose: str
    decision: str
    rule: str
    result: str
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_time(self.time)
        texts = _TEXTS(self)
        # one pass over all fields on the hot path, in C calls only (join refuses what
        # is not a str, then all() finds an empty one); name the culprit only on failure.
        # Printable text holds no control character and no lone surrogate: only other
        # text is searched (the search was 15 k instructions an entry, isprintable 6 k)
        try:
            joined = "".join(texts)
        except TypeError:
            joined = None
        if (
            joined is None
            or not all(texts)
            or (not joined.isprintable() and _FORBIDDEN.search(joined))
        ):
            for name, text in zip(_FIELDS[1:], texts, strict=True):
                _check_text(name, text)
        if self.decision not in DECISIONS:
            raise InvalidInput(f"audit decision {self.decision!r}: use one of {sorted(DECISIONS)}")
        _check_details(self.details)
        object.__setattr__(self, "details", dict(self.details))

    def as_dict(self) -> dict[str, Any]:
        # spelt out rather than a loop of getattr over _FIELDS: half the instructions,
        # and every entry written is encoded from it (the known-answer test holds its keys)
        data: dict[str, Any] = {
            "v": ENTRY_VERSION,
            "time": self.time,
            "request_id": self.request_id,
            "principal": self.principal,
            "tenant": self.tenant,
            "action": self.action,
            "resource": self.resource,
            "purpose": self.purpose,
            "decision": self.decision,
            "rule": self.rule,
            "result": self.result,
        }
        if self.details:
            data["details"] = dict(self.details)
        return data

    def to_bytes(self) -> bytes:
        """The canonical bytes that are hashed into the tree."""
        data = canonical_json(self.as_dict())
        if len(data) > MAX_ENTRY_BYTES:
            raise InvalidInput(f"audit entry is {len(data)} bytes, the limit is {MAX_ENTRY_BYTES}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditEntry:
        """Parse and check an entry; anything but a canonical v1 entry is `IntegrityError`."""
        if len(data) > MAX_ENTRY_BYTES:
            raise IntegrityError(f"audit entry is over the {MAX_ENTRY_BYTES}-byte limit")
        try:
            # Duplicate keys need no hook: json keeps the last one, so the bytes
            # are then not the canonical encoding and are refused below.
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            # RecursionError: 64 KiB of brackets nest deeper than the parser recurses
            raise IntegrityError(f"audit entry is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise IntegrityError("audit entry is not a JSON object")
        version = raw.get("v")
        # the type too: 1.0 (and True) equal 1, and "v":1.0 re-encodes to itself,
        # so it would be a second encoding of the entry, hashed as another leaf
        if type(version) is not int or version != ENTRY_VERSION:
            raise IntegrityError(
                f"audit entry version {version!r} is not known to this reader "
                f"(it reads version {ENTRY_VERSION})"
            )
        unknown = set(raw) - {"v", "details", *_FIELDS}
        missing = set(_FIELDS) - set(raw)
        if unknown or missing:
            raise IntegrityError(
                f"audit entry fields: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        details = raw.get("details", {})
        if not isinstance(details, dict) or ("details" in raw and not details):
            raise IntegrityError("audit entry 'details' must be a non-empty object when present")
        try:
            entry = cls(**{name: raw[name] for name in _FIELDS}, details=details)
        except InvalidInput as exc:
            raise IntegrityError(f"audit entry is invalid: {exc}") from None
        if canonical_json(raw) != data:
            raise IntegrityError("audit entry is not in canonical JSON form")
        return entry


class AuditHasher:
    """Keyed pseudonyms for personal data in audit entries (HMAC-SHA256, per-cell key).

    A label separates kinds of values, so a subject id and an object key that
    happen to be equal strings do not get the same pseudonym.
    """

    __slots__ = ("_key", "_keyed", "_recent")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 32:
            raise InvalidInput("the audit HMAC key must be at least 32 random bytes")
        self._key = key
        # keyed once: a copy is about 7 k instructions cheaper than hmac.digest, which
        # sets the key up again for every new pseudonym (a fresh get's object key)
        self._keyed = hmac.new(key, digestmod="sha256")
        self._recent: dict[tuple[str, str], str] = {}  # a subject's requests come in runs

    def __repr__(self) -> str:
        return "AuditHasher(<key hidden>)"

    def pseudonym(self, label: str, value: str) -> str:
        """``hmac-sha256:<hex>`` of ``label || 0x00 || value``."""
        found = self._recent.get((label, value))
        if found is None:
            keyed = self._keyed.copy()
            keyed.update(label.encode("utf-8") + b"\x00" + value.encode("utf-8"))
            found = PSEUDONYM_PREFIX + keyed.hexdigest()
            if len(self._recent) >= _RECENT_PSEUDONYMS:
                self._recent.clear()
            self._recent[(label, value)] = found
        return found

    def secret(self, label: str, value: str) -> bytes:
        """HMAC-SHA256 of ``secret:<label> || 0x00 || value``, raw: 32 bytes nobody without
        the key can compute, the same each time (a deletion receipt's nonce). The prefix
        keeps every secret apart from every pseudonym, which the log shows."""
        message = f"secret:{label}".encode() + b"\x00" + value.encode("utf-8")
        return hmac.digest(self._key, message, "sha256")

    def resource(self, tenant: str, subject: str | None = None, key: str | None = None) -> str:
        """``tenant[/subject-pseudonym[/key-pseudonym]]``: names an object without revealing it."""
        parts = [tenant]
        if subject is not None:
            parts.append(self.pseudonym("subject", subject))
            if key is not None:
                parts.append(self.pseudonym("key", key))
        elif key is not None:
            raise InvalidInput("an audit resource with an object key needs its subject")
        return "/".join(parts)


def new_entry(
    *,
    at: datetime | float,
    hasher: AuditHasher,
    request_id: str,
    principal: str,
    tenant: str,
    action: str,
    purpose: str,
    decision: str,
    rule: str,
    result: str,
    subject: str | None = None,
    key: str | None = None,
    details: Mapping[str, DetailValue] | None = None,
) -> AuditEntry:
    """Build an entry from plaintext request values; subject and key are pseudonymised here.
    AT is a datetime or POSIX seconds (`entry_time`)."""
    return AuditEntry(  # in field order, by position: eleven keywords cost 3.5 k an entry
        format_time(at) if isinstance(at, datetime) else entry_time(at),
        request_id,
        principal,
        tenant,
        str(action),
        hasher.resource(tenant, subject, key),
        purpose,
        str(decision),
        rule,
        result,
        details or {},
    )


__all__ = [
    "DECISIONS",
    "ENTRY_VERSION",
    "AuditEntry",
    "AuditHasher",
    "canonical_json",
    "entry_time",
    "format_time",
    "new_entry",
]
