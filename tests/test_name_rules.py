"""A name rule answers a name it passed before from its set, and nothing else from it."""

from __future__ import annotations

import pytest

from shardvault.errors import InvalidInput
from shardvault.model import is_token, jurisdiction_code, tenant_name, token
from shardvault.name_rules import PASSED_LIMIT, NameRule


class _Pretender(str):
    """Text that claims to equal (and hash as) a name a rule passed."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("intl")


def test_a_passed_name_is_kept_and_a_refused_one_is_not() -> None:
    rule = NameRule(r"[a-z]{1,8}")
    assert rule.matches("intl")
    assert not rule.matches("Intl")
    assert not rule.matches(42)
    assert rule.passed == {"intl"}


def test_a_str_subclass_is_matched_not_looked_up() -> None:
    tenant_name("intl")  # passed once: in the set
    with pytest.raises(InvalidInput, match="invalid tenant"):
        tenant_name(_Pretender("Not A Tenant"))


def test_the_set_is_bounded_and_refusals_stand_after_it_empties() -> None:
    rule = NameRule(r"[a-z0-9]{1,8}")
    for i in range(PASSED_LIMIT + 10):
        assert rule.matches(f"n{i}")
    assert len(rule.passed) <= PASSED_LIMIT
    assert not rule.matches("N0") and not rule.matches("")


def test_the_public_checks_still_refuse_bad_names_after_good_ones() -> None:
    for _ in range(3):
        assert token("svc:reader", "principal id") == "svc:reader"
        assert jurisdiction_code("US") == "US"
    for bad in ("svc reader", "", "-x", None):
        with pytest.raises(InvalidInput, match="principal id"):
            token(bad, "principal id")
    with pytest.raises(InvalidInput, match="jurisdiction"):
        jurisdiction_code("us")


@pytest.mark.parametrize(
    "value", ["svc:reader", "a", "x" * 128, "x" * 129, "svc reader", "", "-x", None, 7, "é"]
)
def test_is_token_says_what_token_would(value: object) -> None:
    try:
        token(value, "purpose")
    except InvalidInput:
        assert not is_token(value)
    else:
        assert is_token(value)
