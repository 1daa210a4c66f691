"""Subject keys wrap data keys: the middle and bottom of the key hierarchy.

Custodian root → subject key (wrapped by the custodian, kept in the catalog)
→ data key per object version (wrapped here by the subject key, kept in the
manifest). Rotating a subject key re-wraps data keys; it never re-encrypts data.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shardvault.codec.segment import SegmentBinding
from shardvault.errors import IntegrityError

DATA_KEY_BLOB_VERSION = 1
_NONCE = 12


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def new_key_id() -> str:
    return os.urandom(16).hex()


def _aad(binding: SegmentBinding) -> bytes:
    return b"shardvault/data-key/v1" + binding.prefix()


def wrap_data_key(subject_key: bytes, data_key: bytes, binding: SegmentBinding) -> bytes:
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(subject_key).encrypt(nonce, data_key, _aad(binding))
    return bytes([DATA_KEY_BLOB_VERSION]) + nonce + sealed


def unwrap_data_key(subject_key: bytes, blob: bytes, binding: SegmentBinding) -> bytes:
    if not blob or blob[0] != DATA_KEY_BLOB_VERSION:
        raise IntegrityError("wrapped data key has an unknown format version")
    try:
        return AESGCM(subject_key).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _aad(binding))
    except InvalidTag:
        raise IntegrityError(
            f"data key of {binding.ref} v{binding.version} failed to unwrap"
        ) from None
