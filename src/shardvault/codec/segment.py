"""AES-256-GCM per segment, with associated data that pins each segment to its place.

Each object version has its own random 256-bit data key, used for exactly one
version, so the 96-bit nonce can be the segment index: a (key, nonce) pair never
repeats. The associated data binds tenant, subject, key, version, object id and
segment index, so a segment moved to another object, version or position fails
to decrypt instead of yielding someone else's bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shardvault.errors import IntegrityError
from shardvault.model import ObjectRef
from shardvault.slot_init import slot_init

TAG_BYTES = 16
KEY_BYTES = 32
_AAD_LABEL = b"shardvault/segment/v1"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_NONCE = struct.Struct(">4xQ")
_LABEL_FIELD = _U32.pack(len(_AAD_LABEL)) + _AAD_LABEL


@slot_init
@dataclass(frozen=True, slots=True)
class SegmentBinding:
    """Everything a segment's ciphertext is bound to, besides its index."""

    ref: ObjectRef
    version: int
    object_id: bytes
    _prefix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # each field as its u32 BE length and its bytes, then the u64 BE version: spelled
        # out with packers made once, as every get and put builds one (a generator of
        # struct.pack calls cost about 8 k instructions more)
        ref, length = self.ref, _U32.pack
        tenant, subject, key = ref.tenant.encode(), ref.subject.encode(), ref.key.encode()
        prefix = b"".join(
            (
                _LABEL_FIELD,
                length(len(tenant)), tenant,
                length(len(subject)), subject,
                length(len(key)), key,
                length(len(self.object_id)), self.object_id,
                _U64.pack(self.version),
            )
        )  # fmt: skip
        object.__setattr__(self, "_prefix", prefix)

    def prefix(self) -> bytes:
        """The associated data of every segment, before its index (built once: a put
        and a get each need it twice, for the data key's wrap and for the segments)."""
        return self._prefix


class SegmentCipher:
    """Seals and opens the segments of one object version."""

    def __init__(self, data_key: bytes, binding: SegmentBinding) -> None:
        if len(data_key) != KEY_BYTES:
            raise ValueError("data key must be 32 bytes")
        self._aead = AESGCM(data_key)
        self._prefix = binding.prefix()

    def _aad(self, index: int) -> bytes:
        return self._prefix + _U64.pack(index)

    @staticmethod
    def _nonce(index: int) -> bytes:
        return _NONCE.pack(index)

    def seal(self, index: int, plaintext: bytes | memoryview) -> bytes:
        return self._aead.encrypt(self._nonce(index), plaintext, self._aad(index))

    def open(self, index: int, ciphertext: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(index), ciphertext, self._aad(index))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None
