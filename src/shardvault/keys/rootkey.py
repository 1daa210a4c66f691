"""The wrapping recipe every software custodian shares: AES-256-GCM under a root key.

Blob format (docs/formats.md, "wrapped key"): version byte 0x01, 12-byte random
nonce, ciphertext+tag. The associated data names the scope and key id, so a
blob moved to another tenant, jurisdiction or subject fails to unwrap.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shardvault.errors import KeyUnavailable, SubjectForgotten
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.model import Justification

BLOB_VERSION = 1
_NONCE = 12

CustodianGate = Callable[[KeyOperation, KeyScope, str, Justification], None]
"""Called before every wrap, unwrap and destroy, before anything is done; raises
`AccessDenied` to refuse (the custodian's own policy)."""


def _aad(scope: KeyScope, key_id: str) -> bytes:
    label = f"shardvault/subject-key/v{BLOB_VERSION}"
    return f"{label}|{scope.tenant}|{scope.jurisdiction}|{key_id}".encode()


def seal_key(root: bytes, scope: KeyScope, key_id: str, key: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return bytes([BLOB_VERSION]) + nonce + AESGCM(root).encrypt(nonce, key, _aad(scope, key_id))


def open_key(root: bytes, scope: KeyScope, key_id: str, blob: bytes) -> bytes:
    if not blob or blob[0] != BLOB_VERSION:
        version = blob[0] if blob else "none"
        raise KeyUnavailable(f"wrapped key format version {version} is not supported")
    nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
    try:
        return AESGCM(root).decrypt(nonce, body, _aad(scope, key_id))
    except InvalidTag:
        raise KeyUnavailable(
            f"custodian could not unwrap key {key_id} for {scope.label()}: "
            "wrong key or tampered blob"
        ) from None


def refuse_destroyed(scope: KeyScope, key_id: str) -> SubjectForgotten:
    return SubjectForgotten(
        f"key {key_id} of {scope.label()} was destroyed: the subject was forgotten"
    )
