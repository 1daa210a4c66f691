"""Principals and API tokens: salted hashes only, expiry, revocation, forgery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shardvault.errors import AccessDenied, Conflict, InvalidInput, NotFound
from shardvault.governance.principals import PrincipalRegistry
from shardvault.policy import Principal, PrincipalKind

SAM = Principal("sam", "intl", PrincipalKind.EMPLOYEE, "US", frozenset({"support"}))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path: Path, clock: Clock) -> PrincipalRegistry:
    return PrincipalRegistry(tmp_path / "governance.sqlite", clock)


def test_a_token_authenticates_its_principal_and_is_stored_only_as_a_salted_hash(
    registry: PrincipalRegistry, tmp_path: Path
) -> None:
    issued = registry.add(SAM)
    assert issued is not None and issued.token.startswith("svt_")
    assert registry.authenticate(issued.token) == SAM
    second = registry.issue_token("sam")
    assert second.token != issued.token and registry.authenticate(second.token) == SAM
    registry.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("governance.sqlite*"))
    for token in (issued.token, second.token):
        secret = token.split("_", 2)[2]  # the secret itself may contain "_"
        assert secret.encode() not in stored


def test_forged_tokens_are_refused_with_one_opaque_message(registry: PrincipalRegistry) -> None:
    issued = registry.add(SAM)
    assert issued is not None
    prefix, token_id, secret = issued.token.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    forgeries = [
        f"{prefix}_{token_id}_{flipped}",  # one character of the secret
        f"{prefix}_{'0' * 16}_{secret}",  # an id that does not exist
        f"{prefix}_{token_id}_{secret}x",  # too long
        issued.token.upper(),
        "svt_",
        "",
        "Bearer " + issued.token,
    ]
    messages = set()
    for forged in forgeries:
        with pytest.raises(AccessDenied) as refused:
            registry.authenticate(forged)
        messages.add(str(refused.value))
    assert len(messages) == 1
    # another principal's secret under this id is refused too
    other = registry.add(Principal("bob", "intl", PrincipalKind.SERVICE, "US"))
    assert other is not None
    with pytest.raises(AccessDenied):
        registry.authenticate(f"svt_{token_id}_{other.token.rsplit('_', 1)[1]}")


def test_tokens_expire(registry: PrincipalRegistry, clock: Clock) -> None:
    issued = registry.add(SAM, token_ttl=60)
    assert issued is not None
    clock.now += 59
    assert registry.authenticate(issued.token) == SAM
    clock.now += 1
    with pytest.raises(AccessDenied):
        registry.authenticate(issued.token)
    assert registry.get("sam").active_tokens == 0


def test_revoking_a_token_or_a_principal(registry: PrincipalRegistry) -> None:
    first = registry.add(SAM)
    second = registry.issue_token("sam")
    assert first is not None
    registry.revoke_token("sam", first.token_id)
    with pytest.raises(AccessDenied):
        registry.authenticate(first.token)
    assert registry.authenticate(second.token) == SAM
    assert registry.revoke("sam") == 1
    with pytest.raises(AccessDenied):
        registry.authenticate(second.token)
    assert registry.get("sam").revoked_at is not None
    with pytest.raises(InvalidInput, match="revoked"):
        registry.issue_token("sam")


def test_registry_refuses_bad_principals(registry: PrincipalRegistry) -> None:
    registry.add(SAM)
    with pytest.raises(Conflict):
        registry.add(SAM)
    with pytest.raises(InvalidInput, match="built in"):
        registry.add(Principal("local-admin", "intl", PrincipalKind.EMPLOYEE, "US"))
    with pytest.raises(NotFound):
        registry.revoke("nobody")
    with pytest.raises(InvalidInput):
        registry.issue_token("sam", 0)


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), 1e308, 11 * 366 * 86400])
def test_a_token_lifetime_must_expire(registry: PrincipalRegistry, ttl: float) -> None:
    # a NaN lifetime never expired (every comparison with it is false); 1e308 days crashed
    with pytest.raises(InvalidInput, match="lifetime must be more than 0 and at most 3660 days"):
        registry.add(SAM, token_ttl=ttl)
    assert registry.find("sam") is None  # refused whole: no principal without its token
    registry.add(SAM, token_ttl=None)
    with pytest.raises(InvalidInput, match="lifetime"):
        registry.issue_token("sam", ttl)


def test_a_token_is_revoked_only_as_its_own_principals(registry: PrincipalRegistry) -> None:
    # `principal revoke bob --token-id <carol's>` revoked carol's token and said
    # "revoked token ...", leaving live the token of bob's that was meant
    bob = registry.add(SAM)
    carol = registry.add(Principal("carol", "intl", PrincipalKind.SERVICE, "US"))
    assert bob is not None and carol is not None
    with pytest.raises(NotFound, match="principal 'sam' has no token"):
        registry.revoke_token("sam", carol.token_id)
    with pytest.raises(NotFound, match="no principal 'nobody'"):
        registry.revoke_token("nobody", carol.token_id)
    assert registry.authenticate(carol.token).id == "carol"
    registry.revoke_token("carol", carol.token_id)
    with pytest.raises(AccessDenied):
        registry.authenticate(carol.token)
    assert registry.authenticate(bob.token) == SAM
