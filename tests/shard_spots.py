"""Where a shard's bytes are on its local-directory node, a file of its own or a pack
record (docs/formats.md), for tests that damage shards on disk; and which shards a
node's directory still holds. Found from the version's manifest, as a read finds them:
its node, its generation and, packed, its location."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from conftest import manifest_of
from shardvault.model import ObjectRef
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.pack_records import (
    CRC,
    FILE_HEADER,
    FRAMING,
    RECORD,
    RECORD_MAGIC,
    SHARD,
    framed_records,
    parse_location,
    record_in,
)
from shardvault.nodes.port import shard_name
from shardvault.vault import Vault


@dataclass(frozen=True)
class Spot:
    """Where a shard's bytes are on its node: a file of its own, or a pack record."""

    store: LocalDirShardStore
    name: str
    location: str | None
    path: Path
    start: int  # of the shard's data in the file
    length: int

    @property
    def packed(self) -> bool:
        return self.location is not None

    @property
    def record(self) -> int:
        """Where its pack record begins (its data, for a file of its own)."""
        return self.start - RECORD.size - len(self.name) if self.packed else self.start

    @property
    def end(self) -> int:
        """Where its bytes end: a pack record's CRC included."""
        return self.start + self.length + (CRC.size if self.packed else 0)

    def data(self) -> bytes:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            return handle.read(self.length)

    def replace(self, data: bytes) -> None:
        """Other bytes in its place: a file of its own rewritten whole; a pack record's
        data (as many bytes as it holds) with its CRC made to match, so the record frames."""
        if not self.packed:
            self.path.write_bytes(data)
            return
        assert len(data) == self.length, "a pack record's data is replaced in place"
        raw = bytearray(self.path.read_bytes())
        raw[self.start : self.start + self.length] = data
        end = self.start + self.length
        raw[end : end + CRC.size] = CRC.pack(zlib.crc32(raw[self.record : end]))
        self.path.write_bytes(bytes(raw))

    def flip(self, offset: int, bit: int) -> None:
        raw = bytearray(self.path.read_bytes())
        raw[offset] ^= 1 << bit
        self.path.write_bytes(bytes(raw))


def spot(vault: Vault, ref: ObjectRef, version: int, index: int) -> Spot:
    """Shard INDEX of the version, where its manifest places it; asserts it is there (a
    file of that name, or a record at its location naming it)."""
    manifest = manifest_of(vault, ref, version)
    home = vault.subject(ref.tenant, ref.subject).jurisdiction
    node = manifest.nodes[index]
    store = vault.cells[home].store(node)
    assert isinstance(store, LocalDirShardStore)
    name = shard_name(manifest.object_id, version, index, manifest.generation(index))
    location = manifest.location(index)
    if location is None:
        path = store.shard_path(name)
        assert path.is_file(), f"no file of shard {name} on {node}"
        return Spot(store, name, None, path, 0, path.stat().st_size)
    encoded = name.encode()
    parsed = parse_location(location, encoded)
    assert parsed is not None, f"shard {name}: a bad location {location}"
    pack, start, record = parsed
    path = store.packs.directory / pack
    assert path.is_file(), f"no pack {pack} of shard {name} on {node}"
    with path.open("rb") as handle:
        handle.seek(record)
        found = record_in(handle.read(RECORD.size + len(encoded)), pack, start, encoded)
    assert found is not None, f"no record of shard {name} at {location} on {node}"
    return Spot(store, name, location, path, start, found.length)


def spots(vault: Vault, ref: ObjectRef, version: int) -> list[Spot]:
    """Every shard of the version, by index."""
    count = len(manifest_of(vault, ref, version).nodes)
    return [spot(vault, ref, version, index) for index in range(count)]


def held_shards(node: Path) -> set[str]:
    """The names of the shards a node's directory holds: files of their own, and pack
    records that are whole or whose data a delete has not zeroed (damaged, not deleted)."""
    held = {path.name for path in node.glob("shards/*/*/*") if path.is_file()}
    for pack in node.glob("packs/*.pack"):
        raw = pack.read_bytes()
        if not raw.startswith(FILE_HEADER):
            continue
        body = raw[len(FILE_HEADER) :]
        end = 0
        for at, kind, name_len, data_len, whole in framed_records(body):
            end = at + FRAMING + name_len + data_len
            if kind == SHARD and (whole or _not_zeroed(body, at, name_len, data_len)):
                held.add(_name(body, at, name_len))
        if end + RECORD.size <= len(body):  # a last record failing its CRC: not framed above
            magic, kind, _, name_len, data_len = RECORD.unpack_from(body, end)
            framed = end + FRAMING + name_len + data_len <= len(body)
            shard = (magic, kind) == (RECORD_MAGIC, SHARD)
            if shard and framed and _not_zeroed(body, end, name_len, data_len):
                held.add(_name(body, end, name_len))
    return held


def _name(body: bytes, at: int, name_len: int) -> str:
    return body[at + RECORD.size : at + RECORD.size + name_len].decode("ascii", errors="replace")


def _not_zeroed(body: bytes, at: int, name_len: int, data_len: int) -> bool:
    """Whether a record's data is not all zeros, as a delete leaves it."""
    start = at + RECORD.size + name_len
    return body.count(0, start, start + data_len) < data_len
