"""The wrapping recipe every software custodian shares: AES-256-GCM under a root key.

Blob format (docs/formats.md, "wrapped key"): version byte 0x01, 12-byte random
nonce, ciphertext+tag. The associated data names the scope and key id, so a
blob moved to another tenant, jurisdiction or subject fails to unwrap.

A custodian also keeps, per key it wrapped, a tag of the subject it was wrapped
for (`subject_tag`): an HMAC under a key derived from the scope's root, so its
file names no subject and only the custodian can check a subject against it. A
destroy, or an unwrap that names an approval, is honoured only for the subject
that approval names (docs/trust-model.md).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shardvault.errors import AccessDenied, KeyUnavailable, SubjectForgotten
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.model import Justification

BLOB_VERSION = 1
SUBJECT_TAG_VERSION = 1
_NONCE = 12

KEY_SUBJECT = "custodian:key-subject"
"""The rule of a refusal because the key is not the subject's the request is for."""
NO_SUBJECT = "its approval names no subject"
NO_RECORD = "the custodian holds no record of the subject it was wrapped for"
OTHER_SUBJECT = "its approval is for another subject than the key was wrapped for"
TAKEN = "it was wrapped for another subject"
OTHER_APPROVED = "its approval is for another subject than the one it is to be wrapped for"

CustodianGate = Callable[[KeyOperation, KeyScope, str, Justification], str | None]
"""Called before every wrap, unwrap and destroy, before anything is done; raises
`AccessDenied` to refuse (the custodian's own policy). For a destroy, and for a
wrap or unwrap whose justification names an approval, it returns the subject that
approval names: the custodian then destroys or unwraps the key only if it wrapped it
for that subject (None, or no tag of that subject, refuses), and wraps it only for
that subject (`require_approved_subject`)."""


def _aad(scope: KeyScope, key_id: str) -> bytes:
    label = f"shardvault/subject-key/v{BLOB_VERSION}"
    return f"{label}|{scope.tenant}|{scope.jurisdiction}|{key_id}".encode()


@functools.lru_cache(maxsize=64)
def _root_cipher(root: bytes) -> AESGCM:
    """A root's AES-GCM context, made once: making one sets up two OpenSSL contexts,
    which in a request (cold caches) took 7 µs against 4 µs for the unwrap itself
    (docs/performance.md). Roots are held for the process's life anyway."""
    return AESGCM(root)


def seal_key(root: bytes, scope: KeyScope, key_id: str, key: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    sealed = _root_cipher(root).encrypt(nonce, key, _aad(scope, key_id))
    return bytes([BLOB_VERSION]) + nonce + sealed


def open_key(root: bytes, scope: KeyScope, key_id: str, blob: bytes) -> bytes:
    if not blob or blob[0] != BLOB_VERSION:
        version = blob[0] if blob else "none"
        raise KeyUnavailable(f"wrapped key format version {version} is not supported")
    nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
    try:
        return _root_cipher(root).decrypt(nonce, body, _aad(scope, key_id))
    except InvalidTag:
        raise KeyUnavailable(
            f"custodian could not unwrap key {key_id} for {scope.label()}: "
            "wrong key or tampered blob"
        ) from None


def refuse_destroyed(scope: KeyScope, key_id: str) -> SubjectForgotten:
    return SubjectForgotten(
        f"key {key_id} of {scope.label()} was destroyed: the subject was forgotten"
    )


def subject_key(root: bytes) -> bytes:
    """The scope's key for subject tags, derived from its root (never the root itself,
    which seals keys)."""
    info = f"shardvault/key-subject/v{SUBJECT_TAG_VERSION}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(root)


def subject_tag(tag_key: bytes, scope: KeyScope, key_id: str, subject: str) -> bytes:
    """What the custodian keeps of the subject a key was wrapped for (32 bytes)."""
    fields = (scope.tenant, scope.jurisdiction, key_id, subject)
    message = b"".join(len(b).to_bytes(4, "big") + b for b in (f.encode() for f in fields))
    return hmac.new(tag_key, message, hashlib.sha256).digest()


def require_approved_subject(
    scope: KeyScope, key_id: str, approved: str | None, subject: str
) -> None:
    """A wrap on an approval is for the subject the approvers signed for, none other:
    else a met approval to register one user registers any."""
    if approved is None:
        raise refuse_key_subject(scope, key_id, KeyOperation.WRAP, NO_SUBJECT)
    if approved != subject:
        raise refuse_key_subject(scope, key_id, KeyOperation.WRAP, OTHER_APPROVED)


def refuse_key_subject(
    scope: KeyScope, key_id: str, operation: KeyOperation, reason: str
) -> AccessDenied:
    """A wrap of a key id recorded for another subject, or a destroy whose approval is not
    for the subject the custodian recorded the key for."""
    return AccessDenied(
        f"key custodian refused the {operation} ({KEY_SUBJECT}): key {key_id} of "
        f"{scope.label()}: {reason}",
        rule=KEY_SUBJECT,
    )
