"""Who may act: the principal registry and its API tokens (``state/governance.sqlite``).

A principal is registered once with its tenant, kind, roles and location (and,
for an external requester, the authority and its country); the vault resolves
every request's principal id here, so a caller cannot claim roles or a location
it was not given.

Tokens are ``svt_<id>_<secret>``: 16 hex digits naming the token row, then 32
random bytes (base64url). Only ``SHA-256(salt || secret)`` with a per-token
16-byte salt is stored, and the check uses `hmac.compare_digest`, so the
database does not let anyone act as a principal and timing does not leak the
secret. Tokens expire and can be revoked; revoking a principal revokes all of
its tokens and refuses it everywhere. Every refusal says the same thing, so an
attacker learns nothing from which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from shardvault import sqlite_connections
from shardvault.durability import closed_database, failure_reason
from shardvault.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
    VaultClosed,
)
from shardvault.model import LOCAL_ADMIN, shown
from shardvault.model import token as checked_name
from shardvault.policy import Principal, PrincipalKind
from shardvault.sqlite_schema import stamp_schema

# 2: the layout of 1, stamped so that a shardvault from before owed scrubs refuses this
# deployment's governance commands: its `approval ls` and `approval sign` open this file
# but not the subject directory, whose owed scrubs they would skip (docs/formats.md)
SCHEMA_VERSION = 2
TOKEN_PREFIX = "svt_"
DEFAULT_TOKEN_TTL = 90 * 86400
MAX_TOKEN_TTL = 10 * 366 * 86400  # ten years: a longer-lived secret is a standing risk


def _check_ttl(ttl: float) -> None:
    """A lifetime that expires: NaN compares false with everything, so a token with it
    would never expire; an infinite one cannot even be printed."""
    if not 0 < ttl <= MAX_TOKEN_TTL:
        raise InvalidInput(
            f"a token's lifetime must be more than 0 and at most {MAX_TOKEN_TTL // 86400} days"
        )


_TOKEN = re.compile(r"svt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_REFUSED = "token refused: unknown, forged, expired or revoked"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, location TEXT NOT NULL,
    roles TEXT NOT NULL, authority TEXT, authority_country TEXT,
    created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL REFERENCES principals(id),
    salt BLOB NOT NULL, digest BLOB NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL
);
"""


@dataclass(frozen=True, slots=True)
class PrincipalRecord:
    """A registered principal, and whether (and when) it was revoked."""

    principal: Principal
    created_at: float
    revoked_at: float | None = None
    active_tokens: int = 0

    @property
    def id(self) -> str:
        return self.principal.id


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token as handed out once: the secret string is never stored."""

    principal: str
    token_id: str
    token: str
    expires_at: float


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


class PrincipalRegistry:
    """Principals and their tokens, in one SQLite file shared by every process."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite_connections.connect(path, f"principal registry {path}")
            sqlite_connections.use_wal(self._db)
            stamp_schema(self._db, SCHEMA_VERSION, f"principal registry {path}")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"principal registry {path}: {failure_reason(exc, path)}") from exc

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, args: Iterable[object] = ()) -> list[tuple[object, ...]]:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(args)).fetchall()
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            if closed_database(exc):  # used after its vault closed: no retry helps
                raise VaultClosed(f"principal registry: {failure_reason(exc, self.path)}") from exc
            raise Unavailable(f"principal registry: {exc}") from exc

    # principals ---------------------------------------------------------------

    def add(
        self,
        principal: Principal,
        *,
        token_ttl: float | None = DEFAULT_TOKEN_TTL,
    ) -> IssuedToken | None:
        """Register a principal; returns its first token unless ``token_ttl`` is None."""
        if principal.id == LOCAL_ADMIN:
            raise InvalidInput(f"{LOCAL_ADMIN!r} is built in and cannot be registered")
        if token_ttl is not None:
            _check_ttl(token_ttl)  # before the principal is written: all or nothing
        if self.find(principal.id) is not None:
            raise Conflict(f"principal {principal.id!r} already exists")
        self._run(
            "INSERT INTO principals VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                principal.id,
                principal.tenant,
                principal.kind.value,
                principal.location,
                json.dumps(sorted(principal.roles)),
                principal.authority,
                principal.authority_country,
                self._clock(),
            ),
        )
        return None if token_ttl is None else self.issue_token(principal.id, token_ttl)

    def find(self, principal_id: str) -> PrincipalRecord | None:
        checked_name(principal_id, "principal id")  # an undecodable one failed in SQLite
        rows = self._run(
            "SELECT p.*, (SELECT count(*) FROM tokens t WHERE t.principal = p.id "
            "AND t.revoked_at IS NULL AND t.expires_at > ?) FROM principals p WHERE p.id = ?",
            (self._clock(), principal_id),
        )
        return _record(rows[0]) if rows else None

    def get(self, principal_id: str) -> PrincipalRecord:
        record = self.find(principal_id)
        if record is None and principal_id == LOCAL_ADMIN:  # `add` refuses it: say why
            raise InvalidInput(
                f"{LOCAL_ADMIN!r} is built in, not registered: it acts without a token, "
                "and has none to issue or revoke"
            )
        if record is None:
            raise NotFound(
                f"no principal {shown(principal_id)}: add it with 'shardvault principal add'"
            )
        return record

    def all(self) -> list[PrincipalRecord]:
        rows = self._run(
            "SELECT p.*, (SELECT count(*) FROM tokens t WHERE t.principal = p.id "
            "AND t.revoked_at IS NULL AND t.expires_at > ?) FROM principals p ORDER BY p.id",
            (self._clock(),),
        )
        return [_record(row) for row in rows]

    def revoke(self, principal_id: str) -> int:
        """Revoke a principal and every token of theirs; returns the tokens revoked."""
        self.get(principal_id)
        now = self._clock()
        self._run(
            "UPDATE principals SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
            (now, principal_id),
        )
        live = self._run(
            "SELECT count(*) FROM tokens WHERE principal = ? AND revoked_at IS NULL",
            (principal_id,),
        )[0][0]
        self._run(
            "UPDATE tokens SET revoked_at = ? WHERE principal = ? AND revoked_at IS NULL",
            (now, principal_id),
        )
        assert isinstance(live, int)
        return live

    # tokens -------------------------------------------------------------------

    def issue_token(self, principal_id: str, ttl: float = DEFAULT_TOKEN_TTL) -> IssuedToken:
        _check_ttl(ttl)
        record = self.get(principal_id)
        if record.revoked_at is not None:
            raise InvalidInput(f"principal {principal_id!r} is revoked")
        token_id = os.urandom(8).hex()
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")
        salt = os.urandom(16)
        now = self._clock()
        self._run(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (token_id, principal_id, salt, _digest(salt, secret), now, now + ttl),
        )
        return IssuedToken(principal_id, token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", now + ttl)

    def revoke_token(self, principal_id: str, token_id: str) -> None:
        """Revoke one token of ``principal_id``'s. A token id of another principal's is
        `NotFound`: revoking it would leave live the token the caller meant to revoke."""
        self.get(principal_id)
        if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
            raise InvalidInput(f"invalid token id {shown(token_id)}: 16 hex digits")
        rows = self._run(
            "SELECT 1 FROM tokens WHERE id = ? AND principal = ?", (token_id, principal_id)
        )
        if not rows:
            raise NotFound(f"principal {principal_id!r} has no token {shown(token_id)}")
        self._run(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
            (self._clock(), token_id),
        )

    def authenticate(self, token: str) -> Principal:
        """The principal a token stands for; `AccessDenied` (one opaque message) otherwise."""
        principal_id, problem = self.identify(token)
        if problem is not None:
            raise AccessDenied(_REFUSED, rule="governance:token")
        return self.get(principal_id).principal

    def identify(self, token: str) -> tuple[str, str | None]:
        """Whose genuine token this is, and why it no longer works (``revoked``,
        ``expired``) or None. A token that is not genuine names nobody: `AccessDenied`.

        A refused request with a genuine token is still that principal's, and is
        audited and counted as such (a foreign authority's, say).
        """
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            raise AccessDenied(_REFUSED, rule="governance:token")
        token_id, secret = match.groups()
        rows = self._run(
            "SELECT t.salt, t.digest, t.expires_at, t.revoked_at, p.revoked_at, p.id "
            "FROM tokens t JOIN principals p ON p.id = t.principal WHERE t.id = ?",
            (token_id,),
        )
        if not rows:
            # spend the same work as a real check, so unknown ids are not faster
            hmac.compare_digest(_digest(b"\0" * 16, secret), b"\0" * 32)
            raise AccessDenied(_REFUSED, rule="governance:token")
        salt, digest, expires_at, revoked, principal_revoked, principal_id = rows[0]
        assert isinstance(salt, bytes) and isinstance(digest, bytes)
        assert isinstance(expires_at, float) and isinstance(principal_id, str)
        if not hmac.compare_digest(_digest(salt, secret), digest):
            raise AccessDenied(_REFUSED, rule="governance:token")
        if revoked is not None or principal_revoked is not None:
            return principal_id, "revoked"
        if self._clock() >= expires_at:
            return principal_id, "expired"
        return principal_id, None


def _record(row: tuple[object, ...]) -> PrincipalRecord:
    ident, tenant, kind, location, roles, authority, country, created, revoked, live = row
    assert isinstance(roles, str) and isinstance(created, float) and isinstance(live, int)
    principal = Principal(
        id=str(ident),
        tenant=str(tenant),
        kind=PrincipalKind(str(kind)),
        location=str(location),
        roles=frozenset(json.loads(roles)),
        authority=authority if isinstance(authority, str) else None,
        authority_country=country if isinstance(country, str) else None,
    )
    return PrincipalRecord(
        principal, created, revoked if isinstance(revoked, float) else None, live
    )


__all__ = [
    "DEFAULT_TOKEN_TTL",
    "IssuedToken",
    "PrincipalRecord",
    "PrincipalRegistry",
]
