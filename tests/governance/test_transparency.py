"""The transparency report on a generated history matches counts kept by the test itself."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.governance.helpers import (
    CN_POLICE,
    OTHER_TENANT,
    SERVICE,
    SG_SUPPORT,
    SUPPORT,
    US_COURT,
    as_,
    register,
)

from governance_support import approve, ensure_approvers
from shardvault.audit import AuditEntry, AuditHasher, export_to_directory, new_entry, verify_export
from shardvault.config import load
from shardvault.errors import AccessDenied, ApprovalRequired, IntegrityError, InvalidInput
from shardvault.governance.transparency import (
    Key,
    count_request_bytes,
    count_requests,
    period,
    transparency_report,
)
from shardvault.model import ObjectRef, RequestContext, new_request_id
from shardvault.vault import Vault

REF = ObjectRef("intl", "alice", "inbox")
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = JAN_1

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def history(config_path: Path) -> Iterator[tuple[Vault, Counter[tuple[str, str, str, str]]]]:
    """90 days of requests; returns the vault and the February figures the test expects."""
    clock = Clock()
    rng = random.Random(7)
    expected: Counter[tuple[str, str, str, str]] = Counter()
    with Vault.open(load(config_path), clock=clock) as vault:
        register(vault)
        ensure_approvers(vault.governance)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"mail", ctx=as_(SERVICE, "serve-user"))
        for _ in range(160):
            clock.now = JAN_1 + rng.uniform(0, 90) * 86400
            in_february = datetime.fromtimestamp(clock.now, UTC).month == 2
            kind, outcome = _one_request(vault, rng)
            if in_february:
                for entry in outcome:
                    expected[(kind[0], kind[1], "protected", entry)] += 1
        yield vault, expected


def _one_request(vault: Vault, rng: random.Random) -> tuple[tuple[str, str], list[str]]:
    """Make one random request; return (kind, country) and the decision of each request id."""
    choice = rng.randrange(7)
    if choice == 0:
        vault.get(REF, ctx=as_(SERVICE, "serve-user"))
        return ("service", "-"), ["allow"]
    if choice == 1:
        with pytest.raises(AccessDenied, match="custodian"):
            vault.get(REF, ctx=as_(SUPPORT, "support-ticket"))
        return ("employee", "-"), ["deny"]
    if choice == 2:
        with pytest.raises(AccessDenied, match="protected-read-location"):
            vault.list("intl", "alice", ctx=as_(SG_SUPPORT, "support-ticket"))
        return ("employee", "-"), ["deny"]
    if choice == 3:
        with pytest.raises(AccessDenied, match="foreign-government"):
            vault.get(REF, ctx=as_(CN_POLICE, "lawful-request"))
        return ("external-requester", "CN"), ["deny"]
    if choice == 4:
        with pytest.raises(ApprovalRequired):
            vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
        return ("external-requester", "US"), ["approval-required"]
    if choice == 5:
        with pytest.raises(ApprovalRequired) as pending:
            vault.get(REF, ctx=as_(US_COURT, "lawful-request"))
        assert pending.value.approval_id is not None
        approve(vault.governance, pending.value.approval_id)
        vault.get(REF, ctx=as_(US_COURT, "lawful-request", pending.value.approval_id))
        return ("external-requester", "US"), ["approval-required", "allow"]
    with pytest.raises(AccessDenied, match="cross-tenant"):
        vault.stat(REF, ctx=as_(OTHER_TENANT, "serve-user"))
    return ("service", "-"), ["deny"]


def test_report_matches_independent_counts(
    history: tuple[Vault, Counter[tuple[str, str, str, str]]], tmp_path: Path
) -> None:
    vault, expected = history
    assert sum(expected.values()) > 40
    report = transparency_report(vault.governance, "2026-02-01", "2026-02-28")
    us = Counter(
        {
            (r.requester_kind, r.authority_country, r.data_class, r.decision): r.requests
            for r in report.rows
            if r.cell == "US"
        }
    )
    assert us == expected
    assert {r.cell for r in report.rows} == {"US"}
    # each figure is tied to a cosigned head covering the whole log
    heads = {h.cell: h for h in report.heads}
    assert heads["US"].size == vault.governance.cell("US").log.size
    assert all(r.head_size == heads["US"].size for r in report.rows)

    # an outsider recomputes the same figures from a verified export
    vault.governance.publish_head("US")
    export_to_directory(vault.governance.cell("US").log, tmp_path / "export")
    verified = verify_export(
        tmp_path / "export",
        vault.governance.cell("US").signer.verifier_key(),
        cosigner_key=vault.governance.partner.vkey(),
    )
    lines = (tmp_path / "export" / "entries.jsonl").read_bytes().splitlines()
    assert len(lines) == verified.entries
    start, end = period("2026-02-01", "2026-02-28")
    assert count_requests((AuditEntry.from_bytes(raw) for raw in lines), start, end) == expected
    assert count_request_bytes(lines, start, end) == expected


def test_the_period_is_strict() -> None:
    assert period("2026-02-01", "2026-02-28") == (
        "2026-02-01T00:00:00.000000Z",
        "2026-03-01T00:00:00.000000Z",
    )
    for bad in (("2026-02-30", "2026-03-01"), ("2026-03-01", "2026-02-01"), ("feb", "mar")):
        with pytest.raises(InvalidInput, match=r"YYYY-MM-DD|before"):
            period(*bad)


def _allowed_read(at: datetime) -> AuditEntry:
    """One allowed read by principal p of tenant intl, decided by the policy at AT."""
    return new_entry(
        at=at,
        hasher=AuditHasher(b"\x01" * 32),
        request_id="r1",
        principal="p",
        tenant="intl",
        action="read",
        purpose="serve-user",
        decision="allow",
        rule="r",
        result="allowed",
        details={"stage": "policy"},
    )


def test_the_period_reaches_both_ends_of_the_calendar() -> None:
    # --to 9999-12-31 (an open end) overflowed: the day after has no datetime, and
    # 24:00 of the last day is not RFC 3339
    start, end = period("0001-01-01", "9999-12-31")
    assert (start, end) == ("0001-01-01T00:00:00.000000Z", None)
    assert period("9999-12-31", "9999-12-31") == ("9999-12-31T00:00:00.000000Z", None)
    last = _allowed_read(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    expected = {("unknown", "-", "protected", "allow"): 1}
    assert count_requests([last], start, end) == expected
    assert count_request_bytes([last.to_bytes()], start, end) == expected


def test_unknown_requesters_are_counted_too(vault: Vault) -> None:
    vault.register_subject("intl", "alice", "US")
    ghost = RequestContext("ghost", "lawful-request", new_request_id())
    with pytest.raises(AccessDenied):
        vault.list("intl", "alice", ctx=ghost)
    today = datetime.now(UTC).date().isoformat()
    report = transparency_report(vault.governance, today, today)
    unknown = [r for r in report.rows if r.requester_kind == "unknown"]
    assert [(r.decision, r.requests) for r in unknown] == [("deny", 1)]


def test_a_revoked_authority_is_still_counted_under_its_country(config_path: Path) -> None:
    # its refused request was counted as "unknown": the foreign request vanished from
    # the country's figures
    with Vault.open(load(config_path)) as vault:
        register(vault)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"mail", ctx=as_(SERVICE, "serve-user"))
        for revoke in (False, True):
            if revoke:
                vault.governance.registry.revoke(CN_POLICE.id)
            with pytest.raises(AccessDenied, match=r"foreign-government|revoked"):
                vault.get(REF, ctx=as_(CN_POLICE, "lawful-request"))
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        report = transparency_report(vault.governance, today, today)
        counted = {
            (r.requester_kind, r.authority_country): r.requests
            for r in report.rows
            if r.cell == "US" and r.decision == "deny"
        }
        assert counted == {("external-requester", "CN"): 2}


def test_a_revoked_token_through_the_cli_is_audited_as_its_principal(
    config_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # the CLI refused it before any decision: neither logged nor counted
    from tests.cli.test_cli import Cli

    with Vault.open(load(config_path)) as vault:
        vault.register_subject("intl", "alice", "US")
        issued = vault.governance.registry.add(CN_POLICE, token_ttl=3600)
        assert issued is not None
        vault.governance.registry.revoke(CN_POLICE.id)
    cli = Cli(config_path, capsysbinary)
    line = cli.fails(1, "--token", issued.token, "get", "intl", "alice", "inbox")
    assert line == f"error: token refused: the token of {CN_POLICE.id} is revoked"
    with Vault.open(load(config_path)) as vault:
        log = vault.governance.cell("US").log
        last = AuditEntry.from_bytes(next(log.iter_entry_bytes(log.size - 1, log.size)))
    assert (last.principal, last.decision, last.rule) == (CN_POLICE.id, "deny", "governance:token")
    assert (last.details["kind"], last.details["authority_country"]) == (
        "external-requester", "CN"
    )  # fmt: skip


def test_a_foreign_request_under_another_principals_request_id_is_counted_as_its_own(
    config_path: Path,
) -> None:
    # the embedding program names each request; a foreign authority's refusal under an
    # id a service used before was merged into the service's request: counted as the
    # service's (and its allowed read as denied), or not at all when the service's
    # request was in an earlier period. The log held the refusal; the report hid it
    clock = Clock()
    with Vault.open(load(config_path), clock=clock) as vault:
        register(vault)
        vault.register_subject("intl", "alice", "US")
        vault.put(REF, b"mail", ctx=as_(SERVICE, "serve-user"))
        for day, rid in ((10, "req-jan"), (40, "req-feb")):
            clock.now = JAN_1 + day * 86400
            vault.get(REF, ctx=RequestContext(SERVICE.id, "serve-user", rid))
        clock.now = JAN_1 + 45 * 86400
        for rid in ("req-jan", "req-feb"):
            with pytest.raises(AccessDenied, match="foreign-government"):
                vault.get(REF, ctx=RequestContext(CN_POLICE.id, "lawful-request", rid))
        report = transparency_report(vault.governance, "2026-02-01", "2026-02-28")
    counted = {(r.requester_kind, r.authority_country, r.decision): r.requests for r in report.rows}
    assert counted == {("service", "-", "allow"): 1, ("external-requester", "CN", "deny"): 2}


def reference_count(entries: list[AuditEntry], start: str, end: str) -> Counter[Key]:
    """The counting rule of the module docstring, written plainly: the oracle."""
    strength = {"allow": 0, "approval-required": 1, "deny": 2}
    counted = [e for e in entries if e.details.get("stage") in ("policy", "custodian")]
    counts: Counter[Key] = Counter()
    for request in dict.fromkeys((e.principal, e.request_id) for e in counted):
        mine = [e for e in counted if (e.principal, e.request_id) == request]
        if not start <= mine[0].time < end:
            continue
        policy = [e for e in mine if e.details["stage"] == "policy"]
        details = policy[0].details if policy else {}
        who = (
            str(details.get("kind") or "unknown"),
            str(details.get("authority_country") or "-"),
            str(details.get("data_class") or "protected"),
        )
        counts[(*who, max((e.decision for e in mine), key=strength.__getitem__))] += 1
    return counts


ENTRY = st.builds(
    lambda rid, who, day, decision, stage, kind, country: new_entry(
        at=datetime(2026, 2, 1, tzinfo=UTC) + timedelta(days=day),
        hasher=AuditHasher(b"\x01" * 32),
        request_id=f"r{rid}",
        principal=who,
        tenant="intl",
        action="read",
        purpose="serve-user",
        decision=decision,
        rule="r",
        result="allowed",
        details={"stage": stage}
        | ({"kind": kind} if kind else {})
        | ({"authority_country": country} if country else {}),
    ),
    st.integers(0, 12),
    st.sampled_from(["p", "q"]),  # principals, whose request ids may coincide
    st.integers(-3, 3),
    st.sampled_from(["allow", "approval-required", "deny"]),
    st.sampled_from(["policy", "custodian", "approval", "outcome"]),
    st.sampled_from([None, "service", "external-requester"]),
    st.sampled_from([None, "CN", "US"]),
)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(ENTRY, max_size=40))
def test_counting_entries_or_their_bytes_follows_the_documented_rule(
    entries: list[AuditEntry],
) -> None:
    start, end = "2026-02-01T00:00:00.000000Z", "2026-02-03T00:00:00.000000Z"
    expected = reference_count(entries, start, end)
    assert count_requests(entries, start, end) == expected
    assert count_request_bytes([e.to_bytes() for e in entries], start, end) == expected


def test_an_entry_whose_counted_fields_the_writer_never_wrote_is_an_integrity_error() -> None:
    good = _allowed_read(datetime(2026, 2, 1, tzinfo=UTC)).to_bytes()
    for bad in (
        good.replace(b'"decision":"allow"', b'"decision":"maybe"'),
        good.replace(b'"stage":"policy"', b'"stage":["policy"]'),
        good.replace(b'"v":1', b'"v":2'),
        good.replace(b'"request_id":"r1"', b'"request_id":1'),
        good.replace(b'"v":1', b'"v":true'),  # equal to 1 in Python: a review found it
        good.replace(b'"request_id":"r1"', b'"request_id":"r1\\u0001"'),  # and these
        good.replace(b'"time":"2026-02-01', b'"time":"2026-02-31'),
        good.replace(b'"stage":"policy"', b'"stage":"policy","kind":{"x":1}'),
        good.replace(b'"principal":"p"', b'"principal":["p"]'),  # now part of a request
        good.replace(b'"principal":"p"', b'"principal":"p\\u0000"'),
    ):
        assert bad != good
        with pytest.raises(IntegrityError):
            count_request_bytes([good, bad], "2026-01-01", "2027-01-01")
