"""One exception tree for everything shardvault raises.

Grouped by what the caller can do about it::

    ShardvaultError
    ├── InvalidInput          fix the request (exit 2, HTTP 400)
    │   └── ConfigError       fix the config file (exit 2)
    ├── NotFound              nothing there (exit 1, HTTP 404)
    ├── Conflict              precondition failed; re-read and retry (exit 1, HTTP 409)
    │   └── WriteRaced        an unreserved write lost its version or its shards: write again
    ├── Refused               do not retry: a rule said no (exit 1, HTTP 403)
    │   ├── ResidencyRefused  the home jurisdiction cannot take the write
    │   ├── AccessDenied      policy, tenant isolation or the key custodian said no
    │   ├── ApprovalRequired  the access needs a k-of-n approval first (carries its id)
    │   └── SubjectForgotten  the subject's key was destroyed
    ├── Unavailable           retry later (exit 1, HTTP 503)
    │   ├── TooFewNodes       not enough eligible nodes for a stripe
    │   ├── KeyUnavailable    the custodian could not (or would not) unwrap
    │   ├── AuditUnavailable  the audit entry could not be written
    │   ├── StorageError      a shard store failed (disk full, I/O error)
    │   └── NewerFormat       a file of the deployment is of a newer shardvault: upgrade
    ├── IntegrityError        alert: data damaged beyond what the code can repair (exit 1, HTTP 500)
    └── VaultClosed           the program used a vault (or reader) after closing it: a bug,
                              not a failure; also a RuntimeError (exit 1, HTTP 500)

Adapters re-raise foreign exceptions as one of these with ``raise ... from exc``.
"""

from __future__ import annotations

import errno


class ShardvaultError(Exception):
    """Root of every error shardvault raises on purpose."""

    exit_code = 1
    http_status = 500


class InvalidInput(ShardvaultError):
    """The request itself is wrong: a malformed key, an unknown tenant, a bad flag."""

    exit_code = 2
    http_status = 400


class ConfigError(InvalidInput):
    """The configuration file is missing, unparsable, or names something invalid."""


class NotFound(ShardvaultError):
    """The object, version, subject or node does not exist."""

    http_status = 404


class Conflict(ShardvaultError):
    """A precondition (if-match version, already exists) did not hold."""

    http_status = 409


class WriteRaced(Conflict):
    """An unreserved write's version was taken, or a gc sweep may have taken its shards.

    Raised by the catalog port; the vault writes again under a fresh id and
    version, and after a few lost races in a row takes a reservation instead.
    """


class Refused(ShardvaultError):
    """A rule refused the request; retrying will not help."""

    http_status = 403


class ResidencyRefused(Refused):
    """The data cannot be kept in its home jurisdiction, so it is not written at all."""


class AccessDenied(Refused):
    """Policy, tenant isolation or the key custodian denied the access.

    ``rule`` names the rule or invariant that decided, when one did, so the
    refusal can be audited and explained.
    """

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


class ApprovalRequired(Refused):
    """The access needs a k-of-n approval; ``approval_id`` names the pending one to sign."""

    def __init__(self, message: str, approval_id: str | None = None) -> None:
        super().__init__(message)
        self.approval_id = approval_id


class SubjectForgotten(Refused):
    """The subject was forgotten: its key is destroyed and its data unreadable."""

    http_status = 410


class Unavailable(ShardvaultError):
    """Something needed is not available right now; retry later."""

    http_status = 503


class TooFewNodes(Unavailable):
    """Fewer eligible nodes than a stripe needs."""


class KeyUnavailable(Unavailable):
    """The key custodian could not, or would not, provide the key."""


class AuditUnavailable(Unavailable):
    """The audit entry could not be written, so the access is refused."""


class StorageError(Unavailable):
    """A shard store failed: disk full, permission, I/O error."""


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errnos of a write its disk had no room for, or no quota left: one rule for the
state disk's files (`durability.write_failure`) and the nodes' (`nodes.port`)."""


class NewerFormat(Unavailable):
    """A file of the deployment (a catalog, the keyring, an audit log...) was written by
    a newer shardvault, which this one cannot read: upgrade it, then retry. Not bad
    input (the request is fine), nor damage (the file is whole)."""


class IntegrityError(ShardvaultError):
    """Stored data failed verification beyond what erasure coding can repair."""


class VaultClosed(ShardvaultError, RuntimeError):
    """A vault, or a reader, was used after it was closed: open it again.

    Not `Unavailable` (retry later): retrying never helps, the program's own order of
    calls is wrong. A `RuntimeError` too, as Python says of a shut executor or a closed
    event loop, so ``except RuntimeError`` around a reader keeps catching it.
    """


__all__ = [
    "AccessDenied",
    "ApprovalRequired",
    "AuditUnavailable",
    "ConfigError",
    "Conflict",
    "IntegrityError",
    "InvalidInput",
    "KeyUnavailable",
    "NewerFormat",
    "NotFound",
    "Refused",
    "ResidencyRefused",
    "ShardvaultError",
    "StorageError",
    "SubjectForgotten",
    "TooFewNodes",
    "Unavailable",
    "VaultClosed",
    "WriteRaced",
]
