"""The custodian's independent unwrap policy (src/shardvault/custodian_policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardvault.custodian_policy import (
    APPROVAL_REQUIRED,
    DEFAULT_DENY,
    JUSTIFICATION_REQUIRED,
    SAME_JURISDICTION,
    CustodianPolicy,
    KeyScope,
    decide_key_use,
    load_custodian_policy,
    parse_custodian_policy,
    require_key_use,
)
from shardvault.errors import AccessDenied, ConfigError, InvalidInput
from shardvault.keys.port import KeyOperation
from shardvault.model import Justification

POLICY_TEXT = """
version = 1
approval_purposes = ["forget", "move", "lawful-request"]

[[grant]]
id = "serve-users"
purposes = ["serve-user", "support-ticket"]

[[grant]]
id = "chat-analytics-us"
purposes = ["analytics"]
principals = ["analytics"]
tenants = ["chat"]
jurisdictions = ["US"]

[[grant]]
id = "incident-with-approval"
purposes = ["incident"]
requires_approval = true

[[grant]]
id = "privacy"
purposes = ["forget", "move", "lawful-request"]
"""
POLICY = parse_custodian_policy(POLICY_TEXT)
US_KEY = KeyScope("chat", "US")


def just(purpose: str = "serve-user", **kw: object) -> Justification:
    values: dict = dict(
        principal="api", purpose=purpose, request_id="req-1", requester_jurisdiction="US"
    )
    values.update(kw)
    return Justification(**values)


@pytest.mark.parametrize(
    ("justification", "key", "allowed", "rule"),
    [
        (just(), US_KEY, True, "serve-users"),
        (just("support-ticket"), US_KEY, True, "serve-users"),
        (just("curiosity"), US_KEY, False, DEFAULT_DENY),
        (just(requester_jurisdiction="SG"), US_KEY, False, SAME_JURISDICTION),
        (just(requester_jurisdiction=None), US_KEY, False, SAME_JURISDICTION),
        (just(), KeyScope("chat", "SG"), False, SAME_JURISDICTION),
        (just(principal=""), US_KEY, False, JUSTIFICATION_REQUIRED),
        (just(request_id=""), US_KEY, False, JUSTIFICATION_REQUIRED),
        (just(""), US_KEY, False, JUSTIFICATION_REQUIRED),
        (just(principal="with space"), US_KEY, False, JUSTIFICATION_REQUIRED),
        (just("analytics", principal="analytics"), US_KEY, True, "chat-analytics-us"),
        (just("analytics", principal="api"), US_KEY, False, DEFAULT_DENY),
        (just("analytics", principal="analytics"), KeyScope("maps", "US"), False, DEFAULT_DENY),
        (
            just("analytics", principal="analytics", requester_jurisdiction="SG"),
            KeyScope("chat", "SG"),
            False,
            DEFAULT_DENY,
        ),
        (just("incident"), US_KEY, False, APPROVAL_REQUIRED),
        (just("incident", approval_id="APR-7"), US_KEY, True, "incident-with-approval"),
        (just("forget"), US_KEY, False, APPROVAL_REQUIRED),
        (just("forget", approval_id="APR-8"), US_KEY, True, "privacy"),
        (just("move", approval_id=""), US_KEY, False, APPROVAL_REQUIRED),
        (just("lawful-request", approval_id="LR-1"), US_KEY, True, "privacy"),
        (
            just("lawful-request", approval_id="LR-1", requester_jurisdiction="CN"),
            US_KEY,
            False,
            SAME_JURISDICTION,
        ),
    ],
)
def test_unwrap_decisions(justification, key, allowed: bool, rule: str) -> None:
    decision = decide_key_use(POLICY, KeyOperation.UNWRAP, justification, key)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason


def test_empty_policy_refuses_everything() -> None:
    assert (
        decide_key_use(CustodianPolicy(), KeyOperation.UNWRAP, just(), US_KEY).rule == DEFAULT_DENY
    )


@given(
    purpose=st.sampled_from(["serve-user", "forget", "analytics", "incident"]),
    requester=st.sampled_from(["US", "SG", "CN", "EU"]),
    key_place=st.sampled_from(["US", "SG", "CN", "EU"]),
    approval=st.none() | st.just("APR-1"),
)
def test_never_unwraps_for_another_jurisdiction(purpose, requester, key_place, approval) -> None:
    decision = decide_key_use(
        POLICY,
        KeyOperation.UNWRAP,
        just(purpose, requester_jurisdiction=requester, approval_id=approval),
        KeyScope("chat", key_place),
    )
    if requester != key_place:
        assert not decision.allowed and decision.rule == SAME_JURISDICTION
    if purpose == "forget" and approval is None:
        assert not decision.allowed


def test_require_unwrap_raises_access_denied_with_the_rule() -> None:
    assert require_key_use(POLICY, KeyOperation.UNWRAP, just(), US_KEY).allowed
    with pytest.raises(AccessDenied, match="custodian:same-jurisdiction"):
        require_key_use(POLICY, KeyOperation.UNWRAP, just(requester_jurisdiction="SG"), US_KEY)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("version = 1", "version = 0", "version 0"),  # 2: NewerFormat (tests/cli)
        ("version = 1", "version = 1.0", "version 1.0"),  # accepted: 1.0 == 1
        ('id = "privacy"', 'id = "serve-users"', "used twice"),
        ('id = "privacy"', 'id = "Bad Id"', "invalid"),
        ('purposes = ["incident"]', 'purposes = ["*"]', "must list the purposes"),
        ("requires_approval = true", 'requires_approval = "yes"', "true or false"),
        ('tenants = ["chat"]', 'tenants = ["Chat"]', "tenant"),
        ('jurisdictions = ["US"]', 'jurisdictions = ["usa"]', "jurisdiction"),
        ('principals = ["analytics"]', "principals = []", "non-empty list"),
        (
            'principals = ["analytics"]',
            'principals = ["an alyst"]',
            r"principals: invalid principal id 'an alyst': 1-128 ASCII letters, digits and "
            r"\. _ @ : / - \(not first\)",
        ),
        (
            'purposes = ["incident"]',
            'purposes = ["in cident"]',
            r"purposes: invalid purpose 'in cident': 1-128 ASCII letters, digits",
        ),
        ("approval_purposes", "approval_purpose", "unknown keys"),
        ("requires_approval = true", "requires_aproval = true", "unknown keys"),
        ("[[grant]]", "[[grant", "not valid TOML"),
    ],
)
def test_bad_custodian_policy_files(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_custodian_policy(POLICY_TEXT.replace(old, new, 1))


@pytest.mark.parametrize("grants", ["[1]", '["serve-users"]', "[[1]]", "[true]"])
def test_a_grant_that_is_not_a_table_is_refused_in_one_line(grants: str) -> None:
    with pytest.raises(ConfigError, match=r"grant #1 must be a table"):
        parse_custodian_policy(f"version = 1\ngrant = {grants}\n")


def test_load_from_file_and_key_scope_validation(tmp_path: Path) -> None:
    path = tmp_path / "custodian.toml"
    path.write_text(POLICY_TEXT)
    assert load_custodian_policy(path) == POLICY
    with pytest.raises(ConfigError, match="cannot read"):
        load_custodian_policy(tmp_path / "missing.toml")
    # the OSError's own text came through: "[Errno 21] Is a directory: '/...'"
    with pytest.raises(ConfigError) as caught:
        load_custodian_policy(tmp_path)
    assert str(caught.value) == f"cannot read {tmp_path}: Is a directory"
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text$"):
        load_custodian_policy(tmp_path / "latin1.toml")
    with pytest.raises(InvalidInput):
        KeyScope("chat", "us")


# [approvers]: whose signatures on an approval the partner counts, and how many -----------

DPO_KEY = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="  # seed 00 01 .. 1f
OFFICER_KEY = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik="  # seed of 32 zero bytes
APPROVERS_TEXT = f"""
version = 1
approval_quorum = 2

[approvers]
dpo = "{DPO_KEY}"
partner-officer = "{OFFICER_KEY}"
"""


def test_the_partner_names_its_approvers_and_their_quorum() -> None:
    import base64

    policy = parse_custodian_policy(APPROVERS_TEXT)
    assert policy.approval_quorum == 2
    assert policy.approvers == {
        "dpo": base64.b64decode(DPO_KEY),
        "partner-officer": base64.b64decode(OFFICER_KEY),
    }
    assert POLICY.approvers == {} and POLICY.approval_quorum == 0  # none: no approval counts


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("approval_quorum = 2\n", "", r"approval_quorum must be a whole number from 1 to 2"),
        ("approval_quorum = 2", "approval_quorum = 3", r"from 1 to 2 .*not 3"),
        ("approval_quorum = 2", "approval_quorum = 0", r"from 1 to 2 .*not 0"),
        ("approval_quorum = 2", "approval_quorum = 2.0", r"not 2\.0"),
        ("approval_quorum = 2", "approval_quorum = true", r"not True"),
        ("approval_quorum = 2", 'approval_quorum = "2"', r"not '2'"),
        (f'dpo = "{DPO_KEY}"', f'dpo = "{DPO_KEY[:-4]}"', r"approvers\.dpo is 30 bytes, not"),
        (f'dpo = "{DPO_KEY}"', 'dpo = "not base64!"', r"approvers\.dpo is not base64"),
        (f'dpo = "{DPO_KEY}"', "dpo = 7", r"approvers\.dpo must be a string"),
        (f'dpo = "{DPO_KEY}"', f'dpo = "{OFFICER_KEY}"', r"approvers\.partner-officer has the "
         r"same key as dpo"),
        # by the rule `principal add` and the config's approvers hold an id to, said
        (f'dpo = "{DPO_KEY}"', f'"Bad Id" = "{DPO_KEY}"', r"approvers: invalid principal id "
         r"'Bad Id': 1-128 ASCII letters, digits and \. _ @ : / - \(not first\)"),
        ("[approvers]", "[approvers.x]", r"approvers\.x must be a string"),
        ("[approvers]", "[approver]", r"unknown keys \['approver'\]"),
    ],
)  # fmt: skip
def test_bad_approvers_are_refused_at_load_naming_the_key(
    old: str, new: str, message: str, tmp_path: Path
) -> None:
    text = APPROVERS_TEXT.replace(old, new, 1)
    with pytest.raises(ConfigError, match=message):
        parse_custodian_policy(text)
    path = tmp_path / "custodian-policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: .*{message}"):
        load_custodian_policy(path)


def test_the_partner_binds_approvers_to_the_tenants_whose_approvals_they_count_for() -> None:
    tenants = '\n[approver_tenants]\ndpo = ["intl"]\npartner-officer = ["*"]\n'
    policy = parse_custodian_policy(APPROVERS_TEXT + tenants)
    assert policy.approver_tenants == {"dpo": frozenset({"intl"})}
    assert set(policy.approvers_of("intl")) == {"dpo", "partner-officer"}
    assert set(policy.approvers_of("domestic")) == {"partner-officer"}
    unbound = parse_custodian_policy(APPROVERS_TEXT)
    assert unbound.approvers_of("domestic") == unbound.approvers  # absent: every tenant


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('cfo = ["intl"]', r"approver_tenants\.cfo is not an approver of \[approvers\]"),
        ("dpo = []", r"approver_tenants\.dpo must be a non-empty list of strings"),
        ('dpo = "intl"', r"approver_tenants\.dpo must be a non-empty list of strings"),
        ('dpo = ["Intl!"]', r"approver_tenants\.dpo: invalid tenant"),
    ],
)
def test_bad_approver_tenants_are_refused_at_load_naming_the_key(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_custodian_policy(f"{APPROVERS_TEXT}\n[approver_tenants]\n{table}\n")
    with pytest.raises(ConfigError, match=r"approver_tenants must be a table"):
        parse_custodian_policy(
            APPROVERS_TEXT.replace("[approvers]", "approver_tenants = 1\n[approvers]")
        )


@pytest.mark.parametrize(
    "text",
    ["version = 1\napproval_quorum = 1\n", "version = 1\napproval_quorum = 1\n[approvers]\n",
     "version = 1\napprovers = 5\napproval_quorum = 1\n"],
    ids=["quorum-without-approvers", "empty-table", "not-a-table"],
)  # fmt: skip
def test_a_quorum_needs_approvers(text: str) -> None:
    with pytest.raises(ConfigError, match=r"\[approvers\] must name at least one approver"):
        parse_custodian_policy(text)


def test_the_partner_sets_how_long_a_veto_binds_its_request() -> None:
    assert parse_custodian_policy(APPROVERS_TEXT).veto_days == 30  # absent: a month
    text = APPROVERS_TEXT.replace("approval_quorum = 2", "approval_quorum = 2\nveto_days = 0")
    assert parse_custodian_policy(text).veto_seconds == 0
    for bad in ("-1", "3651", "1.5", "true", '"7"'):
        text = APPROVERS_TEXT.replace(
            "approval_quorum = 2", f"approval_quorum = 2\nveto_days = {bad}"
        )
        with pytest.raises(ConfigError, match=r"veto_days must be a whole number of days from 0 "
                                              r"to 3650, not "):  # fmt: skip
            parse_custodian_policy(text)
