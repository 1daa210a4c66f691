"""The pack file's records: their layout, how a pack's bytes are framed into them,
and where a manifest's location points. Pure (bytes in, values out): the pack set
(nodes/packs.py) does the files, the locks and the index.

Pack file (docs/formats.md, "pack file"), version 1::

    b"SVPK" | u8 version (1) | 3 zero bytes
    record*: b"SVPR" | u8 kind (1 shard, 2 tombstone) | u8 0 | u16 BE name length
             | u32 BE data length | name | data | u32 BE CRC-32 of everything before it

A deleted shard's record keeps its framing alone (`erasure`): its name and data are
zeros, its CRC one that fails.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from shardvault.codec.shardfile import HEADER as SHARD_HEADER
from shardvault.errors import InvalidInput
from shardvault.nodes.port import parse_shard_name
from shardvault.slot_init import slot_init

FILE_MAGIC = b"SVPK"
FILE_VERSION = 1
FILE_HEADER = FILE_MAGIC + bytes([FILE_VERSION, 0, 0, 0])
RECORD = struct.Struct(">4sBBHI")
RECORD_MAGIC = b"SVPR"
SHARD, TOMBSTONE = 1, 2
CRC = struct.Struct(">I")
LOCATION = re.compile(r"([0-9a-f]{16}\.pack):([0-9]{1,18})")  # checked before any path is built
FRAMING = RECORD.size + CRC.size  # of a record, besides its name and data


@slot_init
@dataclass(frozen=True, slots=True)
class PackedShard:
    pack: str
    offset: int
    length: int
    prefetched: bytes | None = None  # the data itself, when a read by location took it

    @property
    def location(self) -> str:
        """What a manifest keeps to find the shard again: ``<pack>:<data offset>``."""
        return f"{self.pack}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Erasure:
    """What a delete writes over a shard's record, and where: from its name's first byte."""

    pack: str
    offset: int
    data: bytes


def erasure(header: bytes, name_length: int, data_length: int) -> bytes:
    """Zeros over a record's name and data, then a CRC that fails (the complement of the
    one zeros would have under `header`): nothing of the shard is left but the framing,
    which the scan needs, and the record never reads as whole again."""
    zeros = bytes(name_length + data_length)
    return zeros + CRC.pack(zlib.crc32(header + zeros) ^ 0xFFFFFFFF)


def erasure_of(name: str, located: PackedShard) -> Erasure:
    """The erasure of a record that frames (its header's lengths hold): a whole one."""
    encoded = name.encode()
    header = RECORD.pack(RECORD_MAGIC, SHARD, 0, len(encoded), located.length)
    overwrite = erasure(header, len(encoded), located.length)
    return Erasure(located.pack, located.offset - len(encoded), overwrite)


def frames(view: bytes, name_length: int) -> bool:
    """Whether the record `view` begins with, its header's data length read after a name
    of `name_length`, ends where the view does or the next record's magic begins."""
    after = RECORD.size + name_length + RECORD.unpack_from(view)[4] + CRC.size
    return after == len(view) or view[after : after + len(RECORD_MAGIC)] == RECORD_MAGIC


def erasure_at(view: bytes, pack: str, record: int, encoded: bytes) -> Erasure | None:
    """The erasure of the shard named `encoded` whose record a location its manifest kept
    puts at `record`; None if the bytes there are not its own. `view`: the pack's bytes
    from `record` on, up to where the record `frames`, else to the end of the file.

    A pack's records never move and its name is never given again, so the location
    says where the shard's record is even once damage garbled its name or header. A
    whole record there is the shard's only if it bears the name: one bearing another
    is another shard's, intact (a wrong location). A damaged one is the shard's if it
    bears the name, or if its data begins with the shard's own file header (object id,
    version, index: an object id is minted afresh for each version); either way,
    never one already zeroed. Its extent is taken from its header only if the record
    so framed ends where the next record (or the file) begins, with no whole record
    inside; else it runs to the next record's magic (a record whose own magic is
    damaged no read can find), short of the 4 bytes before it (the CRC, or what an
    append under way may have shown of its magic at the end of the file)."""
    start = RECORD.size + len(encoded)
    if start > len(view):
        return None
    magic, kind, _, name_length, data_length = RECORD.unpack_from(view)
    end = RECORD.size + name_length + data_length
    if (
        magic == RECORD_MAGIC
        and end + CRC.size <= len(view)
        and CRC.unpack_from(view, end)[0] == zlib.crc32(view[:end])
    ):  # whole
        if (kind, name_length) != (SHARD, len(encoded)) or view[RECORD.size : start] != encoded:
            return None
        return Erasure(
            pack, record + RECORD.size, erasure(view[: RECORD.size], name_length, data_length)
        )
    named = view[RECORD.size : start] == encoded
    if not named and not names_shard(encoded, view[start : start + SHARD_HEADER.size]):
        return None
    after = start + data_length + CRC.size
    inside = next_whole_record(view, start)
    if frames(view, len(encoded)) and (inside is None or inside >= after):
        overwrite = erasure(view[: RECORD.size], len(encoded), data_length)
        return Erasure(pack, record + RECORD.size, overwrite)
    bound = view.find(RECORD_MAGIC, start)
    stop = max(start, (len(view) if bound == -1 else bound) - CRC.size)
    return Erasure(pack, record + RECORD.size, bytes(stop - RECORD.size))


def names_shard(encoded: bytes, data: bytes) -> bool:
    """Whether `data` begins with the shard file header of the shard `encoded` names: its
    object id, version and index (a generation is in the name alone)."""
    try:
        object_id, version, index, _ = parse_shard_name(encoded.decode("ascii"))
    except (UnicodeDecodeError, InvalidInput):
        return False
    if len(data) < SHARD_HEADER.size:
        return False
    _, _, shard, _, _, its_id, its_version, _, _ = SHARD_HEADER.unpack_from(data)
    return (its_id, its_version, shard) == (object_id, version, index)


def shard_records(view: mmap.mmap, encoded: bytes) -> Iterator[tuple[int, int]]:
    """(data offset, length) of each whole shard record named `encoded` in a pack."""
    at = view.find(encoded, len(FILE_HEADER) + RECORD.size)
    while at != -1:
        record = at - RECORD.size
        magic, kind, _, name_len, data_len = RECORD.unpack_from(view, record)
        end = at + name_len + data_len
        if (magic, kind, name_len) == (RECORD_MAGIC, SHARD, len(encoded)) and (
            end + CRC.size <= len(view)
            and CRC.unpack_from(view, end)[0] == zlib.crc32(view[record:end])
        ):
            yield at + name_len, data_len
        at = view.find(encoded, at + 1)


def framed_records(data: bytes) -> Iterator[tuple[int, int, int, int, bool]]:
    """(offset, kind, name length, data length, whole) of each framed record in `data`
    (a pack's bytes after its header), up to a torn tail: nothing whole after. One
    failing its CRC with a record after it (zeroed by a delete, or damaged) is yielded
    as not whole; a stretch that does not frame (a damaged length or magic, the zeros
    a truncation under a live writer left) is stepped over to the next whole record.
    Neither may hide the rest: a compaction copies only what the scan found."""
    cursor = 0
    while cursor + RECORD.size <= len(data):
        magic, kind, _, name_len, data_len = RECORD.unpack_from(data, cursor)
        end = cursor + RECORD.size + name_len + data_len
        if magic == RECORD_MAGIC and end + CRC.size <= len(data):
            whole = CRC.unpack_from(data, end)[0] == zlib.crc32(data[cursor:end])
            if whole or data.startswith(RECORD_MAGIC, end + CRC.size):
                yield cursor, kind, name_len, data_len, whole
                cursor = end + CRC.size
                continue
        resumed = next_whole_record(data, cursor + 1)
        if resumed is None:  # a torn tail
            return
        cursor = resumed


def next_whole_record(data: bytes, start: int) -> int | None:
    """Where the first record from `start` on whose CRC holds begins, if any."""
    at = data.find(RECORD_MAGIC, start)
    while at != -1 and at + RECORD.size <= len(data):
        _, _, _, name_len, data_len = RECORD.unpack_from(data, at)
        end = at + RECORD.size + name_len + data_len
        if end + CRC.size <= len(data) and CRC.unpack_from(data, end)[0] == zlib.crc32(
            data[at:end]
        ):
            return at
        at = data.find(RECORD_MAGIC, at + 1)
    return None


def parse_location(location: str, encoded: bytes) -> tuple[str, int, int] | None:
    """(pack, data offset, record offset) of a location a manifest kept, if well formed."""
    parsed = LOCATION.fullmatch(location)
    if parsed is None:
        return None
    start = int(parsed[2])
    record = start - RECORD.size - len(encoded)
    return None if record < len(FILE_HEADER) else (parsed[1], start, record)


def record_in(head: bytes, pack: str, start: int, encoded: bytes) -> PackedShard | None:
    """The shard whose record `head` begins with, if it is a whole one of that name; its
    data kept when `head` holds all of it."""
    if len(head) < RECORD.size + len(encoded):
        return None
    magic, kind, _, name_len, data_len = RECORD.unpack_from(head)
    if (magic, kind, name_len) != (RECORD_MAGIC, SHARD, len(encoded)) or (
        head[RECORD.size : RECORD.size + name_len] != encoded
    ):
        return None
    data = head[RECORD.size + name_len : RECORD.size + name_len + data_len]
    return PackedShard(pack, start, data_len, data if len(data) == data_len else None)


def encode_record(kind: int, name: str, data: bytes) -> bytes:
    encoded = name.encode()
    body = RECORD.pack(RECORD_MAGIC, kind, 0, len(encoded), len(data)) + encoded + data
    return body + CRC.pack(zlib.crc32(body))
