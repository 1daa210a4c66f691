"""AES-256-GCM segments: round trip, binding of the associated data, bit flips."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import example, given
from hypothesis import strategies as st

from shardvault.codec.segment import TAG_BYTES, SegmentBinding, SegmentCipher
from shardvault.errors import IntegrityError
from shardvault.model import ObjectRef

KEY = bytes(range(32))
OBJECT_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
REF = ObjectRef("intl", "alice", "photos/cat.jpg")
BINDING = SegmentBinding(REF, 3, OBJECT_ID)


def cipher(binding: SegmentBinding = BINDING, key: bytes = KEY) -> SegmentCipher:
    return SegmentCipher(key, binding)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 65537])
def test_round_trip(size: int) -> None:
    plaintext = bytes(i % 251 for i in range(size))
    sealed = cipher().seal(5, plaintext)
    assert len(sealed) == size + TAG_BYTES
    assert plaintext not in sealed or size == 0
    assert cipher().open(5, sealed) == plaintext


def test_known_answer_pins_nonce_and_associated_data_layout() -> None:
    """The documented layout, rebuilt by hand: a change to it breaks every stored object."""
    fields = [b"shardvault/segment/v1", b"intl", b"alice", b"photos/cat.jpg", OBJECT_ID]
    aad = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    aad += struct.pack(">Q", 3) + struct.pack(">Q", 7)
    nonce = bytes(4) + struct.pack(">Q", 7)
    expected = AESGCM(KEY).encrypt(nonce, b"hello segment", aad)
    assert cipher().seal(7, b"hello segment") == expected


@pytest.mark.parametrize(
    "ref",
    [
        ObjectRef("intl", "u+1_2.3-4@x", "日本語/ファイル.txt"),
        ObjectRef("a", "b", "k" * 1024),
        ObjectRef("intl", "alice", "café/ space"),
    ],
)
def test_the_associated_data_counts_each_name_in_utf8_bytes(ref: ObjectRef) -> None:
    fields = [b"shardvault/segment/v1", *(s.encode() for s in (ref.tenant, ref.subject, ref.key))]
    aad = b"".join(struct.pack(">I", len(f)) + f for f in [*fields, OBJECT_ID])
    aad += struct.pack(">Q", 9) + struct.pack(">Q", 2)
    expected = AESGCM(KEY).encrypt(bytes(4) + struct.pack(">Q", 2), b"x", aad)
    assert cipher(SegmentBinding(ref, 9, OBJECT_ID)).seal(2, b"x") == expected


@given(version=st.integers(0, 2**64 - 1), index=st.integers(0, 2**64 - 1))
@example(version=2**64 - 1, index=2**64 - 1)
def test_version_and_index_are_unsigned_64_bit_in_nonce_and_associated_data(
    version: int, index: int
) -> None:
    """docs/formats.md: u64 version, u64 index; the top half of the range is valid too."""
    fields = [b"shardvault/segment/v1", b"intl", b"alice", b"photos/cat.jpg", OBJECT_ID]
    aad = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    aad += version.to_bytes(8, "big") + index.to_bytes(8, "big")
    nonce = bytes(4) + index.to_bytes(8, "big")
    expected = AESGCM(KEY).encrypt(nonce, b"x", aad)
    assert cipher(SegmentBinding(REF, version, OBJECT_ID)).seal(index, b"x") == expected


@pytest.mark.parametrize(
    "other",
    [
        SegmentBinding(ObjectRef("other", "alice", "photos/cat.jpg"), 3, OBJECT_ID),
        SegmentBinding(ObjectRef("intl", "bob", "photos/cat.jpg"), 3, OBJECT_ID),
        SegmentBinding(ObjectRef("intl", "alice", "photos/dog.jpg"), 3, OBJECT_ID),
        SegmentBinding(REF, 4, OBJECT_ID),
        SegmentBinding(REF, 3, bytes(16)),
    ],
    ids=["tenant", "subject", "key", "version", "object-id"],
)
def test_segment_moved_to_another_object_fails(other: SegmentBinding) -> None:
    sealed = cipher().seal(0, b"private bytes")
    with pytest.raises(IntegrityError, match="segment 0 failed authentication"):
        cipher(other).open(0, sealed)


def test_segment_moved_to_another_position_fails() -> None:
    sealed = cipher().seal(1, b"second segment")
    with pytest.raises(IntegrityError):
        cipher().open(2, sealed)
    assert cipher().open(1, sealed) == b"second segment"


def test_wrong_key_fails() -> None:
    sealed = cipher().seal(0, b"private bytes")
    with pytest.raises(IntegrityError):
        cipher(key=bytes(32)).open(0, sealed)


def test_field_boundaries_are_unambiguous() -> None:
    """Length prefixes keep ("ab", "c") and ("a", "bc") apart."""
    one = SegmentBinding(ObjectRef("intl", "ab", "c"), 1, OBJECT_ID)
    two = SegmentBinding(ObjectRef("intl", "a", "bc"), 1, OBJECT_ID)
    assert one.prefix() != two.prefix()
    with pytest.raises(IntegrityError):
        cipher(two).open(0, cipher(one).seal(0, b"x"))


def test_data_key_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SegmentCipher(bytes(16), BINDING)


@given(plaintext=st.binary(max_size=300), data=st.data())
def test_any_flipped_bit_is_caught(plaintext: bytes, data: st.DataObject) -> None:
    sealed = bytearray(cipher().seal(9, plaintext))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        cipher().open(9, bytes(sealed))


@given(plaintext=st.binary(max_size=64), cut=st.integers(1, 80))
def test_truncated_ciphertext_is_caught(plaintext: bytes, cut: int) -> None:
    sealed = cipher().seal(0, plaintext)
    with pytest.raises(IntegrityError):
        cipher().open(0, sealed[: max(0, len(sealed) - cut)])
