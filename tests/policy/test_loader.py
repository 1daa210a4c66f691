"""Policy and case files: versions, strict validation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardvault.errors import ConfigError, InvalidInput
from shardvault.policy import Action, PrincipalKind, load_policy, parse_cases, parse_policy
from shardvault.policy.model import Principal, Resource

RULE = """
[[rule]]
id = "r1"
effect = "allow"
actions = ["read"]
"""


def test_minimal_policy_and_wildcards() -> None:
    policy = parse_policy("version = 1\n" + RULE.replace('["read"]', '["*"]'))
    assert policy.rules[0].actions is None
    assert parse_policy("version = 1\n" + RULE).rules[0].actions == frozenset({Action.READ})
    assert parse_policy("version = 1").rules == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (RULE, "has no version: restore it"),
        ("version = 0\n" + RULE, "version 0"),  # version 2 is NewerFormat (tests/cli)
        ("version = 1\n" + RULE + "colour = 'red'\n", "unknown keys \\['colour'\\]"),
        ("version = 1\n" + RULE.replace('"read"', '"raed"'), "'raed' is not one of"),
        ("version = 1\n" + RULE.replace('"allow"', '"permit"'), "'permit' is not one of"),
        ("version = 1\n" + RULE.replace('actions = ["read"]', ""), "'actions' is required"),
        ("version = 1\n" + RULE.replace('"r1"', '"invariant:x"'), "invalid rule id"),
        ("version = 1\n" + RULE + RULE, "used twice"),
        ("version = 1\n" + RULE + 'tenants = ["Chat"]\n', "tenant"),
        ("version = 1\n" + RULE + "purposes = []\n", "non-empty list"),
        ("version = 1\n" + RULE + 'jurisdictions = ["us"]\n', "jurisdiction"),
        ("version = 1\nrule = 3\n", "array of tables"),
        ("version = 1\nrule = [1]\n", "rule #1 must be a table, not int 1"),
        ("version = 1\nrule = ['x']\n", "rule #1 must be a table, not str 'x'"),
        ("version = 1\n[[rule\n", "not valid TOML"),
        ("version = 1\nextra = 1\n", "unknown keys"),
        ("version = 1.0\n" + RULE, "version 1.0"),  # accepted: 1.0 == 1
        ("version = 1\n" + RULE + "description = 5\n", "description must be a string, not int"),
    ],
)
def test_bad_policy_files_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(text)


def test_unreadable_policy_file(tmp_path: Path) -> None:
    # said in words, not as "[Errno 2] No such file ...: '<path>'" (found in review)
    with pytest.raises(ConfigError) as refused:
        load_policy(tmp_path / "missing.toml")
    assert str(refused.value).endswith("missing.toml: No such file or directory")
    assert "Errno" not in str(refused.value)
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9")
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text"):
        load_policy(tmp_path / "latin1.toml")


CASE = """
version = 1
[[case]]
name = "n"
principal = { id = "a", tenant = "chat", kind = "service", location = "US" }
action = "read"
resource = { tenant = "chat", jurisdiction = "US" }
purpose = "p"
expect = "deny"
"""


def test_case_file_parses_and_defaults_to_protected() -> None:
    (case,) = parse_cases(CASE)
    assert case.resource.data_class == "protected" and case.rule is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('expect = "deny"', 'expect = "no"', "case #1"),
        ('kind = "service"', 'kind = "robot"', "'robot' is not one of"),
        ('kind = "service"', 'kind = "external-requester"', "needs an authority"),
        ('location = "US"', 'location = "USA!"', "jurisdiction"),
        ('purpose = "p"', 'purpose = "two words"', "purpose"),
        ('name = "n"', 'nam = "n"', "unknown keys"),
        ("version = 1", "version = 0", "version 0"),  # 3: NewerFormat (tests/cli)
        ('principal = { id = "a", tenant = "chat", kind = "service", location = "US" }',
         "principal = 5", "case #1.principal must be a table, not int 5"),
        ('resource = { tenant = "chat", jurisdiction = "US" }', 'resource = "US"',
         "case #1.resource must be a table, not str 'US'"),
        # a rule or name of another type was taken as it was: the case could never
        # pass, and `policy test` exited 1 (a policy regression), not 2 (a bad table)
        ('expect = "deny"', 'expect = "deny"\nrule = 5', "case #1: invalid rule 5"),
        ('expect = "deny"', 'expect = "deny"\nrule = ["x"]', r"case #1: invalid rule \['x'\]"),
        ('expect = "deny"', 'expect = "deny"\nrule = ""', "case #1: invalid rule ''"),
        ('name = "n"', "name = { n = 1 }", "case #1.name must be a string, not dict"),
    ],
)  # fmt: skip
def test_bad_case_files_are_config_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cases(CASE.replace(old, new))


def test_a_case_that_is_no_table_is_a_config_error() -> None:
    # `policy test` printed a traceback (TypeError: 'int' object is not iterable)
    with pytest.raises(ConfigError, match="case #1 must be a table, not int 1"):
        parse_cases("version = 1\ncase = [1]\n")


def test_domain_types_validate() -> None:
    with pytest.raises(InvalidInput, match="only an external requester"):
        Principal("a", "chat", PrincipalKind.SERVICE, "US", authority="x", authority_country="US")
    with pytest.raises(InvalidInput):
        Resource("chat", "US", key="k")
    with pytest.raises(InvalidInput, match="principal kind 'wizard' is not one of"):
        Principal("a", "chat", "wizard", "US")  # type: ignore[arg-type]
