"""Audit entries: canonical bytes, versioning, pseudonyms."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shardvault.audit.entry import AuditEntry, AuditHasher, entry_time, format_time, new_entry
from shardvault.errors import IntegrityError, InvalidInput

KEY = bytes(range(32))
AT = datetime(2026, 3, 1, 12, 30, 5, 250000, tzinfo=UTC)


def sample(**overrides: object) -> AuditEntry:
    values: dict = dict(
        at=AT,
        hasher=AuditHasher(KEY),
        request_id="req-1",
        principal="svc-api",
        tenant="chat",
        action="read",
        purpose="serve-user",
        decision="allow",
        rule="allow-service-read",
        result="ok",
        subject="alice@example.com",
        key="photos/1.jpg",
    )
    values.update(overrides)
    return new_entry(**values)


def pseudo(label: str, value: str) -> str:
    mac = hmac.new(KEY, label.encode() + b"\x00" + value.encode(), hashlib.sha256)
    return "hmac-sha256:" + mac.hexdigest()


def test_known_answer_bytes() -> None:
    expected = (
        '{"action":"read","decision":"allow","principal":"svc-api","purpose":"serve-user",'
        '"request_id":"req-1","resource":"chat/'
        + pseudo("subject", "alice@example.com")
        + "/"
        + pseudo("key", "photos/1.jpg")
        + '","result":"ok","rule":"allow-service-read","tenant":"chat",'
        '"time":"2026-03-01T12:30:05.250000Z","v":1}'
    )
    assert sample().to_bytes() == expected.encode()


def test_sensitive_values_never_appear_in_plaintext() -> None:
    data = sample(details={"reason": "ticket 42"}).to_bytes()
    assert b"alice" not in data and b"photos" not in data
    other_key = sample(hasher=AuditHasher(b"\x01" * 32)).to_bytes()
    assert other_key != sample().to_bytes()


def test_same_string_as_subject_and_key_gives_different_pseudonyms() -> None:
    hasher = AuditHasher(KEY)
    assert hasher.pseudonym("subject", "x") != hasher.pseudonym("key", "x")


def test_round_trip_with_details_and_unicode() -> None:
    entry = sample(purpose="Überprüfung ✓", details={"bytes": 12, "cached": False, "note": None})
    assert AuditEntry.from_bytes(entry.to_bytes()) == entry
    assert "Überprüfung ✓".encode() in entry.to_bytes()


def test_time_is_normalised_to_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    assert format_time(local) == "2026-03-01T12:30:05.250000Z"
    with pytest.raises(InvalidInput, match="timezone"):
        format_time(datetime(2026, 1, 1))


@given(st.floats(min_value=-62_135_596_800.0, max_value=253_402_300_799.0))
@example(1_733_580_000.9999995)  # rounds up into the next second
@example(1_733_580_000.0000025)  # half a microsecond, rounded to even
@example(-0.5e-6)  # before the epoch: the second before, not -0
@example(1_733_580_000)  # an int clock
def test_entry_time_spells_an_instant_as_format_time_does(seconds: float) -> None:
    assert entry_time(seconds) == format_time(datetime.fromtimestamp(seconds, UTC))


def test_an_entry_stamped_in_seconds_is_the_one_stamped_with_its_datetime() -> None:
    seconds = AT.timestamp()
    assert sample(at=seconds) == sample()
    assert sample(at=seconds).to_bytes() == sample().to_bytes()


def raw() -> dict:
    return json.loads(sample().to_bytes())


def encode(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(v=2), "version 2 is not known"),
        (lambda d: d.update(v="1"), "version"),
        (lambda d: d.pop("v"), "version None"),
        (lambda d: d.update(extra="x"), "unknown"),
        (lambda d: d.pop("rule"), "missing"),
        (lambda d: d.update(decision="maybe"), "decision"),
        (lambda d: d.update(time="2026-03-01 12:30:05Z"), "RFC 3339"),
        (lambda d: d.update(time="2026-02-30T12:30:05.000000Z"), "real date"),
        (lambda d: d.update(details={}), "details"),
        (lambda d: d.update(details={"n": 1.5}), "only strings"),
        (lambda d: d.update(principal=""), "non-empty"),
    ],
)
def test_reader_refuses_unknown_or_invalid_entries(mutate, message: str) -> None:
    data = raw()
    mutate(data)
    with pytest.raises(IntegrityError, match=message):
        AuditEntry.from_bytes(encode(data))


def test_reader_refuses_non_canonical_encodings() -> None:
    data = raw()
    spaced = json.dumps(data, sort_keys=True).encode()
    unsorted = json.dumps(dict(reversed(list(data.items()))), separators=(",", ":")).encode()
    escaped = json.dumps(data, sort_keys=True, separators=(",", ":")).replace("/", "\\/").encode()
    duplicated = sample().to_bytes()[:-1] + b',"v":1}'
    for bad in (spaced, unsorted, escaped, duplicated, b"[1]", b"\xff", b"{"):
        with pytest.raises(IntegrityError):
            AuditEntry.from_bytes(bad)


def test_bad_input_is_reported_when_building() -> None:
    with pytest.raises(InvalidInput, match="32 random bytes"):
        AuditHasher(b"short")
    with pytest.raises(InvalidInput, match="control character"):
        sample(principal="a\nb")
    with pytest.raises(InvalidInput, match="needs its subject"):
        AuditHasher(KEY).resource("chat", None, "k")
    with pytest.raises(InvalidInput, match="detail name"):
        sample(details={"Bad Key": 1})
    with pytest.raises(InvalidInput, match="limit"):
        sample(details={"blob": "x" * 70000}).to_bytes()
    assert "key hidden" in repr(AuditHasher(KEY))


_TEXT_FIELDS = ("request_id", "principal", "tenant", "action", "resource", "purpose", "rule")


@pytest.mark.parametrize("name", _TEXT_FIELDS)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "must be a non-empty string"),
        (None, "must be a non-empty string"),
        (7, "must be a non-empty string"),
        (b"bytes", "must be a non-empty string"),
        ("a\x1fb", "control character"),
        ("a\udcffb", "lone surrogate"),
    ],
)
def test_every_text_field_is_checked_and_named(name: str, bad: object, message: str) -> None:
    # the fields are checked in one pass of C calls; a refusal still names its field
    with pytest.raises(InvalidInput, match=f"^audit field {name!r} .*{message}"):
        replace(sample(), **{name: bad})


def test_a_text_field_may_be_a_str_subclass() -> None:
    class Named(str):
        pass

    entry = replace(sample(), principal=Named("svc-api"))
    assert entry.to_bytes() == sample().to_bytes()


def test_checks_are_cached_only_for_what_passed() -> None:
    """Details and seconds are checked once and remembered; equal values of another
    type, and anything refused, are still checked every time."""
    sample(details={"n": 1})
    with pytest.raises(InvalidInput, match="only strings"):
        sample(details={"n": 1.0})  # equal to the cached 1, but a float
    for _ in range(2):
        with pytest.raises(InvalidInput, match="control character"):
            sample(details={"note": "a\x00b"})
    entry = sample()
    replace(entry, time="2026-02-28T10:00:00.000000Z")
    for _ in range(2):
        with pytest.raises(InvalidInput, match="real date"):
            replace(entry, time="2026-02-30T10:00:00.000000Z")


def test_each_new_pseudonym_is_the_hmac_of_its_own_value_alone() -> None:
    # the hasher keys one HMAC once and copies it per new value: no use may leave
    # anything in it for the next (each value below is new to the hasher)
    hasher = AuditHasher(KEY)
    for number, value in enumerate(["a", "photos/1.jpg", "é/ü", "a", "x" * 300]):
        label = "key" if number % 2 else "subject"
        assert hasher.pseudonym(label, value) == pseudo(label, value)


@given(st.text(alphabet=st.characters(codec=None), min_size=1))
@example("a\x7fb")  # printable it is not, and allowed
@example("a\x85\u2028b")
@example("a\x1fb")
@example("a\udcffb")
def test_a_field_is_refused_exactly_when_it_holds_a_control_character_or_surrogate(
    text: str,
) -> None:
    # the entry searches only text that is not printable: the same refusals as before
    forbidden = re.search(r"[\x00-\x1f\ud800-\udfff]", text) is not None
    for field in ("rule", "purpose"):
        if forbidden:
            with pytest.raises(InvalidInput, match=f"audit field '{field}' contains a control"):
                replace(sample(), **{field: text})
        else:
            assert getattr(replace(sample(), **{field: text}), field) == text


def test_pseudonyms_are_the_same_whether_remembered_or_not() -> None:
    fresh, warm = AuditHasher(KEY), AuditHasher(KEY)
    warm.pseudonym("subject", "alice")
    assert warm.pseudonym("subject", "alice") == fresh.pseudonym("subject", "alice")
    assert warm.pseudonym("key", "alice") != warm.pseudonym("subject", "alice")


class _Lookalike(str):
    """A name that claims to equal any other: it must be checked by what it spells."""

    def __hash__(self) -> int:
        return hash("stage")

    def __eq__(self, other: object) -> bool:
        return True


def test_cached_checks_cannot_be_fooled_by_unhashable_or_lookalike_values() -> None:
    with pytest.raises(InvalidInput, match="only strings"):
        sample(details={"n": [1]})  # unhashable: checked without the cache, still refused
    sample(details={"stage": "x"})
    with pytest.raises(InvalidInput, match="detail name"):
        sample(details={_Lookalike("BAD KEY\n"): "x"})
    entry = sample()
    with pytest.raises(InvalidInput, match="RFC 3339"):  # Arabic-Indic digits: a second spelling
        replace(entry, time="٢٠٢٦-02-28T10:00:00.000000Z")


def test_an_entry_with_an_unhashable_detail_on_disk_is_an_integrity_error() -> None:
    raw = json.loads(sample(details={"n": 1}).to_bytes())
    raw["details"] = {"n": [1]}
    forged = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with pytest.raises(IntegrityError, match="invalid"):
        AuditEntry.from_bytes(forged.encode())


def test_a_version_spelled_as_a_float_is_refused() -> None:
    """`"v":1.0` equals 1 in Python and re-encodes to itself, so it was a second valid
    encoding of every entry, hashing differently than the entry it parses to."""
    data = sample().to_bytes()
    forged = data.replace(b'"v":1', b'"v":1.0')
    assert forged != data
    with pytest.raises(IntegrityError, match=r"version 1\.0 is not known"):
        AuditEntry.from_bytes(forged)


@pytest.mark.parametrize(
    "nested", [b"[" * 30000 + b"]" * 30000, b'{"a":' * 10000 + b"1" + b"}" * 10000]
)
def test_deeply_nested_json_is_an_integrity_error_not_a_crash(nested: bytes) -> None:
    """Under the 64 KiB limit, JSON can nest deeper than the parser recurses: its
    RecursionError escaped `audit verify` of a hostile export as a traceback."""
    assert len(nested) <= 64 * 1024
    with pytest.raises(IntegrityError, match="not valid JSON"):
        AuditEntry.from_bytes(nested)
