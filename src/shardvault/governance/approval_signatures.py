"""Approvals the approvers sign, and the check the partner's custodian makes of them.

The approval book is the operator's SQLite file: a row there saying who signed
proves nothing. So each approver signs, with an Ed25519 key of their own, a
statement of their verdict on one approval, and the partner's custodian counts
only signatures that verify under the public key its own policy holds for that
approver (``[approvers]`` in the custodian policy), over the statement of the
approval as the book holds it now. A signature copied to another approval, to
the other verdict or to another approver, or a row edited since it was signed
(another subject, a later expiry), verifies for nothing.

The statement, version 2 (docs/formats.md, "Signed approval statement")::

    shardvault-approval/v2\\n{canonical JSON}

the tag and a newline, then the audit entries' canonical JSON of ``approval``
(its id), ``approver``, ``verdict`` (``approve`` or ``deny``), ``requester``,
``action`` (``register`` for a registration), ``tenant``, ``jurisdiction``,
``subject``, ``key`` (null: the request names no object key), ``purpose``,
``request_id`` and ``expires_at`` (RFC 3339 UTC with microseconds): everything
the custodian matches a key use against or acts on. The tag keeps a signature
made for it from meaning anything else.

Version 1 stated a registration as a ``write`` with a null key, which read as
"any key of the subject": approvers who let a user be registered had signed
what read as every put of theirs. A signature of version 1 still verifies, for
what it was made for: its ``write`` with a null key states a registration only.

A denier's withdrawal of their own signed denial is a statement of its own kind
(docs/formats.md, "Signed withdrawal statement")::

    shardvault-withdrawal/v1\n{canonical JSON}

of ``approval``, ``approver`` and ``denial`` (the hex SHA-256 of the denial's
signature, as the partner keeps it): the partner checks it against its own record
alone. Its tag differs from a verdict's, so neither signature verifies as the other.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shardvault.audit.entry import canonical_json, format_time
from shardvault.durability import create_whole, open_given, write_failure
from shardvault.errors import IntegrityError, InvalidInput
from shardvault.governance.approval_record import Approval
from shardvault.model import named
from shardvault.path_limits import os_reason
from shardvault.policy import Action

STATEMENT_TAG = b"shardvault-approval/v2\n"
STATEMENT_TAG_V1 = b"shardvault-approval/v1\n"
WITHDRAWAL_TAG = b"shardvault-withdrawal/v1\n"
VERDICTS = ("approve", "deny")
_REGISTER = str(Action.REGISTER)
MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM key is a few hundred bytes


def statement(approval: Approval, approver: str, verdict: str) -> bytes:
    """The bytes ``approver`` signs to give ``verdict`` on ``approval``.

    `IntegrityError` if the book's row cannot be stated (an expiry that is no time,
    text that is no Unicode): what operator code wrote there, not an approval."""
    return _stated(STATEMENT_TAG, approval, approval.action, approver, verdict)


def statement_v1(approval: Approval, approver: str, verdict: str) -> bytes:
    """The bytes a shardvault before statement version 2 had ``approver`` sign: a
    registration stated as a write with no object key. `IntegrityError` for an
    approval version 1 cannot state (a registration that names a key), so that no
    signature of a keyed write counts for a registration."""
    action = approval.action
    if action == _REGISTER:
        if approval.key is not None:
            raise IntegrityError(f"approval {approval.id} cannot be stated in version 1")
        action = str(Action.WRITE)
    return _stated(STATEMENT_TAG_V1, approval, action, approver, verdict)


def _stated(tag: bytes, approval: Approval, action: str, approver: str, verdict: str) -> bytes:
    if verdict not in VERDICTS:
        raise InvalidInput(f"verdict must be one of {', '.join(VERDICTS)}")
    body = {
        "approval": approval.id,
        "approver": approver,
        "verdict": verdict,
        "requester": approval.requester,
        "action": action,
        "tenant": approval.tenant,
        "jurisdiction": approval.jurisdiction,
        "subject": approval.subject,
        "key": approval.key,
        "purpose": approval.purpose,
        "request_id": approval.request_id,
        "expires_at": _expiry(approval),
    }
    try:
        return tag + canonical_json(body)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise IntegrityError(f"approval {approval.id} cannot be stated: {exc}") from None


def _expiry(approval: Approval) -> str:
    expires = approval.expires_at
    try:
        if isinstance(expires, bool) or not math.isfinite(expires):
            raise ValueError(expires)
        return format_time(datetime.fromtimestamp(expires, UTC))
    except (TypeError, ValueError, OverflowError, OSError):
        raise IntegrityError(f"approval {approval.id} has no valid expiry") from None


def sign_verdict(key: Ed25519PrivateKey, approval: Approval, approver: str, verdict: str) -> bytes:
    """``approver``'s signature of ``verdict`` on ``approval`` (64 bytes)."""
    return key.sign(statement(approval, approver, verdict))


def verifies(
    public_key: bytes, approval: Approval, approver: str, verdict: str, signature: bytes | None
) -> bool:
    """Whether ``signature`` is ``approver``'s ``verdict`` on exactly this approval, in
    the statement of version 2 or, signed before it, of version 1."""
    if signature is None:
        return False
    return any(
        _signed(public_key, signature, stated, approval, approver, verdict)
        for stated in (statement, statement_v1)
    )


def _signed(
    public_key: bytes,
    signature: bytes,
    stated: Callable[[Approval, str, str], bytes],
    approval: Approval,
    approver: str,
    verdict: str,
) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, stated(approval, approver, verdict)
        )
    except (InvalidSignature, IntegrityError, ValueError):
        return False
    return True


def withdrawal_statement(approval_id: str, approver: str, denial: bytes) -> bytes:
    """The bytes ``approver`` signs to withdraw their denial of ``approval_id``, whose
    signature is ``denial``: that one denial, as the partner holds it, and no other."""
    body = {
        "approval": approval_id,
        "approver": approver,
        "denial": hashlib.sha256(denial).hexdigest(),
    }
    try:
        return WITHDRAWAL_TAG + canonical_json(body)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"a withdrawal that cannot be stated: {exc}") from None


def sign_withdrawal(
    key: Ed25519PrivateKey, approval_id: str, approver: str, denial: bytes
) -> bytes:
    """``approver``'s signature withdrawing their denial (signature ``denial``) of
    ``approval_id`` (64 bytes)."""
    return key.sign(withdrawal_statement(approval_id, approver, denial))


def withdrawal_verifies(
    public_key: bytes, approval_id: str, approver: str, denial: bytes, signature: bytes
) -> bool:
    """Whether ``signature`` is ``approver``'s withdrawal of exactly that denial."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, withdrawal_statement(approval_id, approver, denial)
        )
    except (InvalidSignature, InvalidInput, ValueError):
        return False
    return True


def counted_verdicts(
    approval: Approval, approvers: Mapping[str, bytes]
) -> tuple[frozenset[str], frozenset[str]]:
    """Who approved and who denied ``approval``, counting only verdicts signed under the
    key ``approvers`` holds for their approver. The requester's own verdict is not
    counted: nobody approves their own request, in the partner's eyes either."""
    approved: set[str] = set()
    denied: set[str] = set()
    for approver, verdict, _ in approval.signatures:
        key = approvers.get(approver)
        if key is None or approver == approval.requester:
            continue
        if verifies(key, approval, approver, verdict, approval.signature_of(approver)):
            (approved if verdict == "approve" else denied).add(approver)
    return frozenset(approved), frozenset(denied)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An approver's private key: an unencrypted PKCS#8 PEM file (what ``openssl genpkey
    -algorithm ed25519`` and ``shardvault approval keygen`` write), only its owner may
    read. Anything else, unreadable or not there is `InvalidInput` naming the file;
    a named FIFO is refused without being opened (`durability.open_given`)."""
    shown = named(str(path))
    try:
        with open_given(path) as file:
            info = os.fstat(file.fileno())
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read signing key {shown}: {os_reason(exc)}") from None
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
        raise InvalidInput(
            f"signing key {shown} can be read by others (mode {info.st_mode & 0o777:o}): "
            "run chmod 600 on it"
        )
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidInput(f"signing key {shown} is too large to be a key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidInput(f"signing key {shown} is encrypted: give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(
            f"signing key {shown} is not a PEM private key (PKCS#8, BEGIN PRIVATE KEY)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"signing key {shown} is not an Ed25519 key")
    return key


def signing_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as `load_signing_key` reads it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_signing_key(path: Path) -> Ed25519PrivateKey:
    """A new key pair, its private key written to ``path`` (mode 0600, whole or not at
    all); an existing file is refused, never replaced: it may be someone's only key."""
    if not path.name:  # "." or "/": a directory, with no name to write a file under
        raise InvalidInput(f"{named(str(path))} names a directory, not a file: choose a file in it")
    if not path.parent.is_dir():  # made by no mistyped path: the key would be lost there
        raise InvalidInput(f"{named(str(path.parent))} is not a directory: choose a file in one")
    key = Ed25519PrivateKey.generate()
    try:
        made = create_whole(path, signing_key_pem(key), 0o600)
    except OSError as exc:
        raise write_failure(f"signing key {path}", exc) from None
    if not made:
        raise InvalidInput(f"{named(str(path))} already exists: choose a new file")
    return key


__all__ = [
    "STATEMENT_TAG",
    "STATEMENT_TAG_V1",
    "VERDICTS",
    "WITHDRAWAL_TAG",
    "counted_verdicts",
    "load_signing_key",
    "sign_verdict",
    "sign_withdrawal",
    "signing_key_pem",
    "statement",
    "statement_v1",
    "verifies",
    "withdrawal_statement",
    "withdrawal_verifies",
    "write_signing_key",
]
