"""Persisted byte formats: shard header and manifest, pinned by known-answer bytes.

The expected bytes are written out from the layouts documented in
codec/shardfile.py and manifest.py, not produced by the code under test.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardvault.codec.segment import SegmentBinding
from shardvault.codec.shardfile import HEADER, ShardHeader, block_offset
from shardvault.errors import IntegrityError, NewerFormat
from shardvault.manifest import Manifest
from shardvault.model import ObjectRef

HEADER_VALUE = ShardHeader(
    index=2, k=4, m=2, object_id=bytes(range(16)), version=7, segment_size=65536, block_size=16404
)
HEADER_HEX = (
    "53565348"  # b"SVSH"
    "01"  # format version
    "02"  # shard index
    "04"  # k
    "02"  # m
    "000102030405060708090a0b0c0d0e0f"  # object id
    "0000000000000007"  # object version, u64 BE
    "00010000"  # segment size 65536, u32 BE
    "00004014"  # block size 16404, u32 BE
)


def test_shard_header_known_answer() -> None:
    assert HEADER.size == 40
    assert HEADER_VALUE.to_bytes().hex() == HEADER_HEX


def test_shard_header_round_trip_and_trailing_bytes_ignored() -> None:
    raw = bytes.fromhex(HEADER_HEX)
    assert ShardHeader.parse(raw) == HEADER_VALUE
    assert ShardHeader.parse(raw + b"block data") == HEADER_VALUE


def test_header_of_another_shard_of_the_same_stripe_differs_only_in_its_index() -> None:
    raw = HEADER_VALUE.to_bytes(index=5)
    assert raw[6:] == bytes.fromhex(HEADER_HEX)[6:]
    assert ShardHeader.parse(raw) == replace(HEADER_VALUE, index=5)
    assert HEADER_VALUE.to_bytes(index=0)[5] == 0


def test_block_offsets_follow_the_header() -> None:
    assert block_offset(0, 100) == 40
    assert block_offset(3, 100) == 340


@pytest.mark.parametrize("version", [0, 2, 255])
def test_shard_header_with_unknown_version_is_refused(version: int) -> None:
    raw = bytearray.fromhex(HEADER_HEX)
    raw[4] = version
    assert ShardHeader.parse(bytes(raw)) is None


def test_shard_header_with_wrong_magic_or_too_short_is_refused() -> None:
    raw = bytes.fromhex(HEADER_HEX)
    assert ShardHeader.parse(b"XVSH" + raw[4:]) is None
    assert ShardHeader.parse(raw[:-1]) is None
    assert ShardHeader.parse(b"") is None


@given(
    index=st.integers(0, 31),
    k=st.integers(1, 31),
    m=st.integers(1, 31),
    object_id=st.binary(min_size=16, max_size=16),
    version=st.integers(1, 2**64 - 1),
    segment_size=st.integers(0, 2**32 - 1),
    block_size=st.integers(0, 2**32 - 1),
)
def test_shard_header_round_trips(
    index: int, k: int, m: int, object_id: bytes, version: int, segment_size: int, block_size: int
) -> None:
    header = ShardHeader(index, k, m, object_id, version, segment_size, block_size)
    raw = header.to_bytes()
    assert len(raw) == HEADER.size
    assert ShardHeader.parse(raw) == header


MANIFEST = Manifest(
    ref=ObjectRef("intl", "alice", "a.txt"),
    version=2,
    object_id=bytes(range(16)),
    size=5,
    segment_size=65536,
    segments=1,
    k=1,
    m=1,
    backend="isa_l_rs_vand",
    nodes=("us-n1", "us-n2"),
    block_size=64,
    last_block_size=32,
    block_hashes=b"\x11" * 32 + b"\x22" * 32,
    wrapped_data_key=b"\x01\x02\x03",
    subject_key_id="0123",
    created_at=1700000000.5,
    locations=("0123456789abcdef.pack:60", None),
)
MANIFEST_BODY = (
    b'{"backend":"isa_l_rs_vand","block_size":64,"created_at":1700000000.5,"k":1,'
    b'"key":"a.txt","last_block_size":32,"locations":["0123456789abcdef.pack:60",null],'
    b'"m":1,"nodes":["us-n1","us-n2"],'
    b'"object_id":"000102030405060708090a0b0c0d0e0f","segment_size":65536,"segments":1,'
    b'"size":5,"subject":"alice","subject_key_id":"0123","tenant":"intl","version":2,'
    b'"wrapped_data_key":"AQID"}'
)
MANIFEST_BYTES = (
    bytes.fromhex("53564d460200000176")  # b"SVMF", version 2, body length 374
    + MANIFEST_BODY
    + b"\x11" * 32
    + b"\x22" * 32
)
V1_BODY = MANIFEST_BODY.replace(b'"locations":["0123456789abcdef.pack:60",null],', b"")
V1_BYTES = bytes.fromhex("53564d460100000148") + V1_BODY + b"\x11" * 32 + b"\x22" * 32


def test_manifest_known_answer() -> None:
    assert len(MANIFEST_BODY) == 0x176
    assert MANIFEST.to_bytes() == MANIFEST_BYTES


def test_a_version_1_manifest_is_read_as_keeping_no_locations() -> None:
    assert len(V1_BODY) == 0x148
    old = Manifest.from_bytes(V1_BYTES)
    assert old == replace(MANIFEST, locations=())
    assert old.location(0) is None and old.location(1) is None


@pytest.mark.parametrize(
    "locations", [b'"here"', b"[1,null]", b'["a"]', b'["a","b","c"]'], ids=repr
)
def test_a_manifest_with_bad_locations_is_refused(locations: bytes) -> None:
    body = MANIFEST_BODY.replace(b'["0123456789abcdef.pack:60",null]', locations)
    raw = bytes.fromhex("53564d4602") + len(body).to_bytes(4, "big") + body + b"\x11" * 64
    with pytest.raises(IntegrityError, match="location"):
        Manifest.from_bytes(raw)


def test_manifest_round_trip() -> None:
    assert Manifest.from_bytes(MANIFEST_BYTES) == MANIFEST
    assert MANIFEST.block_hash(0, 1) == b"\x22" * 32
    assert MANIFEST.segment_length(0) == 5
    assert [MANIFEST.location(i) for i in range(2)] == ["0123456789abcdef.pack:60", None]


def test_small_manifests_are_parsed_once_and_large_ones_every_time() -> None:
    """A read of a small object reuses the parsed (immutable) manifest; bytes decide."""
    assert Manifest.from_bytes(bytes(MANIFEST_BYTES)) is Manifest.from_bytes(MANIFEST_BYTES)
    other = replace(MANIFEST, version=3).to_bytes()
    assert Manifest.from_bytes(other).version == 3
    large = replace(MANIFEST, segments=40, block_hashes=bytes(40 * 2 * 32)).to_bytes()
    assert len(large) > 2048
    assert Manifest.from_bytes(large) is not Manifest.from_bytes(large)
    assert Manifest.from_bytes(large) == Manifest.from_bytes(large)


def test_manifest_geometry_of_several_segments() -> None:
    big = replace(
        MANIFEST, size=65536 * 2 + 10, segments=3, block_hashes=bytes(range(192)), k=1, m=1
    )
    again = Manifest.from_bytes(big.to_bytes())
    assert again == big
    assert [again.segment_length(s) for s in range(3)] == [65536, 65536, 10]
    assert [again.block_length(s) for s in range(3)] == [64, 64, 32]
    assert again.block_hash(2, 0) == bytes(range(128, 160))


def test_manifest_stripe_header_is_the_header_each_shard_was_written_with() -> None:
    """A read compares shard files against these bytes: every field comes from the manifest."""
    header = MANIFEST.stripe_header()
    for index in range(MANIFEST.n):
        written = ShardHeader(index, 1, 1, bytes(range(16)), 2, 65536, 64)
        assert header.to_bytes(index) == written.to_bytes()
    wider = replace(MANIFEST, k=4, m=2).stripe_header()  # k and m each in its own byte
    assert wider.to_bytes(5) == ShardHeader(5, 4, 2, bytes(range(16)), 2, 65536, 64).to_bytes()


def test_a_manifest_names_only_its_own_copy_of_each_shard() -> None:
    """gc deletes a copy its manifest does not name: the node and the generation both count
    (a repair's rebuild on the same node is generation 2, the bad copy it replaced 0)."""
    rebuilt = replace(MANIFEST, generations=(0, 2))
    assert rebuilt.names_copy(0, "us-n1", 0) and rebuilt.names_copy(1, "us-n2", 2)
    assert not rebuilt.names_copy(1, "us-n2", 0)  # the copy the repair replaced
    assert not rebuilt.names_copy(1, "us-n1", 2)  # another node's
    assert not rebuilt.names_copy(2, "us-n1", 0)  # no such shard in a 1+1 stripe


def test_a_manifest_names_each_shards_copy_once_and_a_changed_one_anew() -> None:
    """What a read looks each shard up by and checks its header against, made once per
    manifest; a manifest made from it with other copies (a reader's reload after a
    repair) names those, not the ones made for the first."""
    first = replace(MANIFEST, generations=(0, 2))
    assert [first.copy(i) for i in range(2)] == [
        ("000102030405060708090a0b0c0d0e0f.v2.s0", "0123456789abcdef.pack:60",
         first.stripe_header().to_bytes(0)),
        ("000102030405060708090a0b0c0d0e0f.v2.s1.g2", None, first.stripe_header().to_bytes(1)),
    ]  # fmt: skip
    assert first.copy(1) is first.copy(1)
    moved = replace(first, generations=(3, 0), locations=(None, "fedcba9876543210.pack:0"))
    assert [moved.copy(i)[:2] for i in range(2)] == [
        ("000102030405060708090a0b0c0d0e0f.v2.s0.g3", None),
        ("000102030405060708090a0b0c0d0e0f.v2.s1", "fedcba9876543210.pack:0"),
    ]
    assert first == replace(MANIFEST, generations=(0, 2))  # made copies or not: equal


def test_a_manifest_binds_its_own_object_once_and_another_anew() -> None:
    """The binding a read unwraps the data key under: kept for the manifest's own object;
    for another (a manifest filed under another object's row) that object's, so the
    unwrap fails rather than decrypt the other object's data as this one's."""
    own = MANIFEST.binding(ObjectRef("intl", "alice", "a.txt"))
    assert own == SegmentBinding(MANIFEST.ref, 2, bytes(range(16)))
    assert MANIFEST.binding(ObjectRef("intl", "alice", "a.txt")) is own
    other = MANIFEST.binding(ObjectRef("intl", "bob", "a.txt"))
    assert other == SegmentBinding(ObjectRef("intl", "bob", "a.txt"), 2, bytes(range(16)))
    assert other.prefix() != own.prefix()
    assert MANIFEST.binding(MANIFEST.ref) is own


def test_manifest_with_unknown_version_is_refused() -> None:
    raw = bytearray(MANIFEST_BYTES)
    raw[4] = 0
    with pytest.raises(IntegrityError, match="manifest format version 0 is not supported"):
        Manifest.from_bytes(bytes(raw))


@pytest.mark.parametrize("version", [4, 9])
def test_a_manifest_of_a_newer_version_says_upgrade(version: int) -> None:
    raw = bytearray(MANIFEST_BYTES)
    raw[4] = version
    with pytest.raises(NewerFormat, match=f"manifest format version {version} is newer.*upgrade"):
        Manifest.from_bytes(bytes(raw))


V3_BODY = MANIFEST_BODY.replace(b'"k":1,', b'"generations":[0,2],"k":1,')
V3_BYTES = bytes.fromhex("53564d46030000018a") + V3_BODY + b"\x11" * 32 + b"\x22" * 32


def test_a_manifest_with_a_shard_of_a_later_generation_is_version_3() -> None:
    """Repair rebuilt shard 1 on its own node as generation 2: only such a manifest is
    version 3; every other is written as version 2, byte for byte as before."""
    assert len(V3_BODY) == 0x18A
    rebuilt = replace(MANIFEST, generations=(0, 2))
    assert rebuilt.to_bytes() == V3_BYTES
    assert Manifest.from_bytes(V3_BYTES) == rebuilt
    assert [rebuilt.generation(i) for i in range(2)] == [0, 2]
    assert [MANIFEST.generation(i) for i in range(2)] == [0, 0]  # version 2: every one 0
    assert replace(MANIFEST, generations=(0, 0)).to_bytes() == MANIFEST_BYTES


@pytest.mark.parametrize(
    "generations",
    [b"null", b'"2"', b"[0]", b"[0,2,0]", b"[0,-1]", b"[0,true]", b"[0,1.5]", b"[0,0]",
     b"[0,2147483648]"],
    ids=repr,
)  # fmt: skip
def test_a_version_3_manifest_with_bad_generations_is_refused(generations: bytes) -> None:
    body = V3_BODY.replace(b"[0,2]", generations)
    raw = bytes.fromhex("53564d4603") + len(body).to_bytes(4, "big") + body + b"\x11" * 64
    with pytest.raises(IntegrityError, match="generation"):
        Manifest.from_bytes(raw)


def test_the_highest_generation_is_read() -> None:
    body = V3_BODY.replace(b"[0,2]", b"[0,2147483647]")
    raw = bytes.fromhex("53564d4603") + len(body).to_bytes(4, "big") + body + b"\x11" * 64
    assert Manifest.from_bytes(raw).generation(1) == 2**31 - 1


def test_a_version_2_manifest_is_read_as_every_shard_of_generation_0() -> None:
    body = V3_BODY
    raw = bytes.fromhex("53564d4602") + len(body).to_bytes(4, "big") + body + b"\x11" * 64
    assert Manifest.from_bytes(raw).generations == ()  # read as before: no such field


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SVM", "truncated"),
        (MANIFEST_BYTES[:8], "truncated"),  # the tag and version, not the body's length
        (b"XXXX" + MANIFEST_BYTES[4:], "not a shardvault manifest"),
        (b"SVMG" + MANIFEST_BYTES[4:], "not a shardvault manifest"),
        (MANIFEST_BYTES[:-1], "block hash table has the wrong length"),
        (MANIFEST_BYTES + b"\x00", "block hash table has the wrong length"),
        (MANIFEST_BYTES[:9] + b"[" + MANIFEST_BYTES[10:], "not valid JSON"),
        (MANIFEST_BYTES[:10] + b"\xff" + MANIFEST_BYTES[11:], "not valid JSON"),  # not UTF-8
    ],
)
def test_damaged_manifest_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        Manifest.from_bytes(raw)


def _with_body(body: bytes) -> bytes:
    return b"SVMF\x02" + len(body).to_bytes(4, "big") + body + b"\x11" * 32 + b"\x22" * 32


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "lacks 'tenant'"),
        (b"[]", "malformed"),
        (MANIFEST_BODY.replace(b'"tenant":"intl",', b""), "lacks 'tenant'"),
        (MANIFEST_BODY.replace(b'"nodes":["us-n1","us-n2"]', b'"nodes":5'), "malformed"),
        (MANIFEST_BODY.replace(b'"object_id":"0001', b'"object_id":"zz01'), "malformed"),
        (
            MANIFEST_BODY.replace(b'"wrapped_data_key":"AQID"', b'"wrapped_data_key":"AQI"'),
            "malformed",
        ),
        (MANIFEST_BODY.replace(b'"tenant":"intl"', b'"tenant":""'), "malformed"),
    ],
)
def test_a_manifest_whose_body_is_json_but_not_a_manifests_is_refused(
    body: bytes, message: str
) -> None:
    # valid JSON without a field (or with one of the wrong kind) raised KeyError, TypeError
    # or ValueError, a traceback for every command that met it, not IntegrityError
    assert len(_with_body(body)) <= 2048  # parsed through the cache, as a get would
    with pytest.raises(IntegrityError, match=message):
        Manifest.from_bytes(_with_body(body))
    with pytest.raises(IntegrityError, match=message):
        Manifest.parse(_with_body(body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b'"size":5', b'"size":"5"'),
        (b'"size":5', b'"size":-5'),
        (b'"segments":1', b'"segments":1.0'),
        (b'"segments":1', b'"segments":0'),
        (b'"version":2', b'"version":true'),
        (b'"version":2', b'"version":0'),
        (b'"segment_size":65536', b'"segment_size":0'),
        (b'"k":1', b'"k":true'),
        (b'"block_size":64', b'"block_size":-1'),
        (b'"last_block_size":32', b'"last_block_size":"32"'),
        (b'"nodes":["us-n1","us-n2"]', b'"nodes":[1,2]'),
        (b'"nodes":["us-n1","us-n2"]', b'"nodes":"us"'),
        (b'"created_at":1700000000.5', b'"created_at":"now"'),
        (b'"created_at":1700000000.5', b'"created_at":false'),
        (b'"subject_key_id":"0123"', b'"subject_key_id":123'),
        (b'"backend":"isa_l_rs_vand"', b'"backend":5'),
        (b'"object_id":"000102030405060708090a0b0c0d0e0f"', b'"object_id":"0001"'),
    ],
)
def test_a_manifest_with_a_field_of_another_kind_is_refused(field: bytes, value: bytes) -> None:
    # docs/formats.md promises it; these were taken as they were, and met later as a
    # TypeError (a traceback) or as a header no shard of the stripe could match
    assert field in MANIFEST_BODY
    with pytest.raises(IntegrityError, match="malformed"):
        Manifest.parse(_with_body(MANIFEST_BODY.replace(field, value)))


def test_a_manifest_body_is_read_as_utf8() -> None:
    """JSON is UTF-8: a name written unescaped is the name, not its bytes read as Latin-1
    (the name is what every segment's associated data binds)."""
    body = MANIFEST_BODY.replace(b'"key":"a.txt"', '"key":"café/日本.txt"'.encode())
    assert Manifest.from_bytes(_with_body(body)).ref.key == "café/日本.txt"


def test_manifest_header_layout() -> None:
    magic, version, length = struct.unpack(">4sBI", MANIFEST_BYTES[:9])
    assert (magic, version, length) == (b"SVMF", 2, len(MANIFEST_BODY))
