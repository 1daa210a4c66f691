"""What a delete leaves of a packed shard's record: neither its name nor its data, even
when the record was damaged, and never a byte of another shard's record. Read from the
pack files' bytes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shardvault.codec.shardfile import ShardHeader
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.pack_records import CRC, RECORD
from shardvault.nodes.port import shard_name
from shardvault.objectid import new_object_id

ALICE, BOB = new_object_id(time.time()), new_object_id(time.time())
GONE = shard_name(ALICE, 1, 1)  # the shard deleted
NAME_LENGTH = len(GONE)
PAYLOAD = 160  # so that the data length (200) has its bit 8 clear: one flip adds 256


def shard(object_id: bytes, version: int, index: int) -> tuple[str, bytes]:
    """A shard's name, and its bytes as a put writes them: a shard file header naming it."""
    header = ShardHeader(index, 4, 2, object_id, version, 4 * PAYLOAD, PAYLOAD)
    return shard_name(object_id, version, index), header.to_bytes() + os.urandom(PAYLOAD)


def put(store: LocalDirShardStore, name: str, data: bytes) -> str:
    writer = store.open_writer(name)
    writer.write(data)
    writer.commit()
    assert writer.location is not None
    return writer.location


def read(store: LocalDirShardStore, name: str) -> bytes:
    reader = store.open_reader(name)
    try:
        return reader.read_at(0, 1 << 20)
    finally:
        reader.close()


class Packed:
    """Bob's shards 0 and 2 around alice's GONE, then bob's 3 and 4, in one pack whose
    writer is gone: its path, each shard's data and location."""

    def __init__(self, root: Path) -> None:
        writer = LocalDirShardStore("n", root)
        self.shards = dict(
            [shard(BOB, 1, 0), (GONE, shard(ALICE, 1, 1)[1]), *(shard(BOB, 1, i) for i in (2, 3))]
        )
        self.locations = {name: put(writer, name, data) for name, data in self.shards.items()}
        writer.close()
        (self.path,) = (root / "packs").glob("*.pack")
        start = int(self.locations[GONE].split(":")[1])
        self.record = start - NAME_LENGTH - RECORD.size  # GONE's
        self.end = start + len(self.shards[GONE]) + CRC.size

    def flip(self, offset: int, bit: int) -> None:
        raw = bytearray(self.path.read_bytes())
        raw[self.record + offset] ^= 1 << bit
        self.path.write_bytes(bytes(raw))

    def delete_gone(self, root: Path, by_location: bool = True) -> LocalDirShardStore:
        """Delete GONE from a store opened anew (by its location, or by name alone) and
        check that its name and data are zeros and every byte outside its record is as
        it was (its header and CRC are framing). The deleting store, still open."""
        before = self.path.read_bytes()
        deleter = LocalDirShardStore("n", root)
        assert deleter.delete(GONE, self.locations[GONE] if by_location else None)
        deleter.sync()
        after = self.path.read_bytes()
        assert after[: self.record] == before[: self.record]
        assert after[self.end :] == before[self.end :]
        gone_left = after[self.record + RECORD.size : self.end - CRC.size]
        assert gone_left == bytes(NAME_LENGTH + len(self.shards[GONE]))
        return deleter


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "node"


def _everything(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*.pack")))


def test_a_delete_zeroes_its_records_name_as_well_as_its_data(root: Path) -> None:
    """The name stayed in the zeroed record for as long as its pack was not compacted:
    a forgotten subject's object ids (when each was minted) readable in the packs."""
    packed = Packed(root)
    deleter = packed.delete_gone(root)
    assert _everything(root).count(GONE.encode()) == 1  # its tombstone, until compacted
    deleter.close()
    reader = LocalDirShardStore("n", root)
    assert sorted(reader.names()) == sorted(set(packed.shards) - {GONE})
    reader.close()


# where a bit of GONE's record is flipped, from the record's start, and which bit
DAMAGE = {
    "data": (RECORD.size + NAME_LENGTH + 60, 2),
    "crc": (RECORD.size + NAME_LENGTH + 40 + PAYLOAD, 5),
    "shard-header": (RECORD.size + NAME_LENGTH + 9, 1),  # in its object id
    "name-time": (RECORD.size, 0),  # its id's first hex digit: minted in the far future
    "name-not-hex": (RECORD.size + 33, 0),  # ".v1" made ".w1": no shard name then
    "kind": (4, 1),
    "magic": (0, 3),
    "name-length": (7, 0),
    "data-length-far": (8, 0),  # 16 MiB more: past the end of the pack
    "data-length-up": (10, 0),  # 256 more: past bob's next record
    "data-length-down": (11, 3),  # 8 fewer
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_delete_by_location_zeroes_a_damaged_record_and_no_other(root: Path, kind: str) -> None:
    """A record whose name, framing or CRC was damaged was left whole by a delete (not
    found, the name no longer its own) or zeroed by its damaged data length, bob's next
    records with it. The location its manifest kept, in a pack whose records never move,
    says the bytes there are its own: attributed by its name or its data's shard header."""
    packed = Packed(root)
    packed.flip(*DAMAGE[kind])
    deleter = packed.delete_gone(root)
    deleter.close()
    reader = LocalDirShardStore("n", root)
    for name, data in packed.shards.items():
        if name != GONE:
            assert read(reader, name) == data and reader.intact(name)
    reader.close()


def test_a_delete_without_a_location_zeroes_a_damaged_record_of_its_name(root: Path) -> None:
    """A shard its manifest keeps no location of (a version 1 manifest, a pending write) is
    found by name: a damaged record is not indexed, so the delete found nothing."""
    packed = Packed(root)
    packed.flip(*DAMAGE["data"])
    deleter = packed.delete_gone(root, by_location=False)
    deleter.close()


@pytest.mark.parametrize("damaged", [False, True])
def test_a_location_that_is_not_the_shards_zeroes_nothing(root: Path, damaged: bool) -> None:
    """A location naming another shard's record (a wrong one): whole, or damaged and so
    attributable by nothing but its name and data, it is not the deleted shard's."""
    packed = Packed(root)
    bob = shard_name(BOB, 1, 2)
    raw = bytearray(packed.path.read_bytes())
    if damaged:
        raw[int(packed.locations[bob].split(":")[1]) + 60] ^= 4
        packed.path.write_bytes(bytes(raw))
    deleter = LocalDirShardStore("n", root)
    assert not deleter.delete(shard_name(ALICE, 1, 2), packed.locations[bob])
    deleter.close()
    assert packed.path.read_bytes() == bytes(raw)


def test_compaction_drops_a_damaged_record_whose_name_its_data_does_not_bear(
    root: Path,
) -> None:
    """Compaction copied a damaged record under whatever shard name it bore: one damaged
    into an id minted in the far future was never an orphan gc could take (it takes only
    ids minted before its cutoff), so a deleted user's bytes stayed for good. One whose
    data's header is not its name's shard's serves no read: its name is asked for by
    nobody, or its header matches no manifest. Named for repair all the same; one whose
    data's header names it is still kept too."""
    packed = Packed(root)
    packed.flip(*DAMAGE["name-time"])
    raw = bytearray(packed.path.read_bytes())
    bob = shard_name(BOB, 1, 3)
    raw[int(packed.locations[bob].split(":")[1]) + 60] ^= 4  # bob's: kept, for repair
    packed.path.write_bytes(bytes(raw))
    collector = LocalDirShardStore("n", root)
    compacted = collector.compact()
    garbled = f"1{GONE[1:]}"
    assert sorted(compacted.damaged) == sorted([bob, garbled])  # named, for repair
    assert sorted(compacted.moved) == sorted(set(packed.shards) - {GONE})
    collector.close()
    assert ALICE.hex()[1:].encode() not in _everything(root)
    assert packed.shards[GONE][40:] not in _everything(root)
