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

TAG_BYTES = 16
KEY_BYTES = 32
_AAD_LABEL = b"shardvault/segment/v1"


@dataclass(frozen=True, slots=True)
class SegmentBinding:
    """Everything a segment's ciphertext is bound to, besides its index."""

    ref: ObjectRef
    version: int
    object_id: bytes
    _prefix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = [
            _AAD_LABEL,
            self.ref.tenant.encode(),
            self.ref.subject.encode(),
            self.ref.key.encode(),
            self.object_id,
        ]
        encoded = b"".join(struct.pack(">I", len(f)) + f for f in fields)
        object.__setattr__(self, "_prefix", encoded + struct.pack(">Q", self.version))

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
        return self._prefix + struct.pack(">Q", index)

    @staticmethod
    def _nonce(index: int) -> bytes:
        return struct.pack(">4xQ", index)

    def seal(self, index: int, plaintext: bytes | memoryview) -> bytes:
        return self._aead.encrypt(self._nonce(index), plaintext, self._aad(index))

    def open(self, index: int, ciphertext: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(index), ciphertext, self._aad(index))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None
