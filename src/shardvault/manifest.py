"""The manifest: everything needed to find, verify and decrypt one object version.

Kept in the home cell's catalog, never on a storage node. Serialized as
(docs/formats.md, "manifest")::

    b"SVMF" | u8 format version (2 or 3) | u32 BE length L | L bytes canonical JSON | block hashes

where the block hashes are segments x n digests of 32 bytes, segment-major.
Version 2 adds ``locations``: per shard, where its store put it (a packed
shard's pack and offset), so a reader need not look it up; version 1 is read
as having none. Version 3 adds ``generations``: per shard, the generation of
its name (nodes/port.py `shard_name`), which repair raises when it rebuilds a
shard on the node its bad copy is on. It is written only for a manifest with
a shard of a generation above 0; any other is written as version 2, byte for
byte as before, and versions 1 and 2 are read as every shard of generation 0.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import struct
from dataclasses import dataclass
from typing import Any, TypeAlias

from shardvault.codec.hashing import HASH_BYTES
from shardvault.codec.segment import SegmentBinding
from shardvault.codec.shardfile import ShardHeader
from shardvault.compact_json import one_shot
from shardvault.errors import IntegrityError, InvalidInput, NewerFormat
from shardvault.model import ObjectRef
from shardvault.nodes.port import shard_name
from shardvault.slot_init import slot_init

MAGIC = b"SVMF"
FORMAT_VERSION = 3  # written only with generations; version 2 otherwise
READS_VERSIONS = (1, 2, 3)
MAX_GENERATION = 2**31 - 1  # far above the repairs one shard will ever see
_HEAD = struct.Struct(">4sBI")
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # one, not one per put
_encoded = one_shot(_ENCODER)  # and its C encoder made once (compact_json)


ShardCopy: TypeAlias = tuple[str, str | None, bytes]
"""Shard index's copy as a manifest names it: its name on its node (`shard_name`), where
its store put it, and the bytes its header must be. A plain tuple: a first read makes
four, and a NamedTuple's Python ``__new__`` cost it about 2 k instructions each."""


@slot_init
@dataclass(frozen=True, slots=True)
class Manifest:
    ref: ObjectRef
    version: int
    object_id: bytes
    size: int
    segment_size: int
    segments: int
    k: int
    m: int
    backend: str
    nodes: tuple[str, ...]
    block_size: int
    last_block_size: int
    block_hashes: bytes
    wrapped_data_key: bytes
    subject_key_id: str
    created_at: float
    locations: tuple[str | None, ...] = ()  # per shard index; () when none were kept
    generations: tuple[int, ...] = ()  # per shard index; () when every one is 0
    _stripe: ShardHeader | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    _copies: list[ShardCopy | None] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    _binding: SegmentBinding | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def location(self, index: int) -> str | None:
        return self.locations[index] if self.locations else None

    def generation(self, index: int) -> int:
        """The generation of shard index's name on its node (nodes/port.py `shard_name`)."""
        return self.generations[index] if self.generations else 0

    def names_copy(self, index: int, node: str, generation: int) -> bool:
        """Whether this manifest names that copy: shard index on that node, under that
        generation (the same node may hold the copy a repair replaced there)."""
        return index < self.n and self.nodes[index] == node and self.generation(index) == generation

    @property
    def n(self) -> int:
        return self.k + self.m

    def block_hash(self, segment: int, index: int) -> bytes:
        start = (segment * self.n + index) * HASH_BYTES
        return self.block_hashes[start : start + HASH_BYTES]

    def stripe_header(self) -> ShardHeader:
        """The header of this version's shards: ``.to_bytes(index)`` is shard index's, byte for
        byte (built once per manifest rather than once per shard)."""
        header = self._stripe
        if header is None:
            header = ShardHeader(
                0, self.k, self.m, self.object_id, self.version, self.segment_size, self.block_size
            )
            object.__setattr__(self, "_stripe", header)  # the same value, however often
        return header

    def copy(self, index: int) -> ShardCopy:
        """Shard index's copy (`ShardCopy`). Made on its first use and kept: a small
        manifest is parsed once per process, and each read named its shards and packed
        their headers again (about 25 k instructions a get). One at a time, so that a
        first read makes only the copies it reads (all of them cost it 15 k more)."""
        copies = self._copies
        if copies is None:
            copies = [None] * self.n
            object.__setattr__(self, "_copies", copies)
        found = copies[index]
        if found is None:  # two threads may both make it: the same value
            found = copies[index] = (
                shard_name(self.object_id, self.version, index, self.generation(index)),
                self.location(index),
                self.stripe_header().to_bytes(index),
            )
        return found

    def binding(self, ref: ObjectRef) -> SegmentBinding:
        """What this version's data key and segments are bound to, read as REF. Made once
        per manifest for its own ref (about 11 k instructions a get otherwise); anew for
        any other, so that a manifest filed under another object's row fails to unwrap."""
        if ref != self.ref:
            return SegmentBinding(ref, self.version, self.object_id)
        binding = self._binding
        if binding is None:
            binding = SegmentBinding(ref, self.version, self.object_id)
            object.__setattr__(self, "_binding", binding)  # the same value, however often
        return binding

    def block_length(self, segment: int) -> int:
        return self.last_block_size if segment == self.segments - 1 else self.block_size

    def segment_length(self, segment: int) -> int:
        """Plaintext bytes in this segment."""
        if segment < self.segments - 1:
            return self.segment_size
        return self.size - self.segment_size * (self.segments - 1)

    def to_bytes(self) -> bytes:
        doc = {
            "tenant": self.ref.tenant,
            "subject": self.ref.subject,
            "key": self.ref.key,
            "version": self.version,
            "object_id": self.object_id.hex(),
            "size": self.size,
            "segment_size": self.segment_size,
            "segments": self.segments,
            "k": self.k,
            "m": self.m,
            "backend": self.backend,
            "nodes": list(self.nodes),
            "block_size": self.block_size,
            "last_block_size": self.last_block_size,
            "wrapped_data_key": base64.b64encode(self.wrapped_data_key).decode(),
            "subject_key_id": self.subject_key_id,
            "created_at": self.created_at,
            "locations": list(self.locations),
        }
        version = 2  # what every manifest was before generations: older readers read it
        if any(self.generations):
            doc["generations"], version = list(self.generations), 3
        body = _encoded(doc).encode()
        return _HEAD.pack(MAGIC, version, len(body)) + body + self.block_hashes

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and check a manifest. A small one is parsed once per process: it is
        immutable, and every read of a small object would otherwise parse it again."""
        if len(data) <= _CACHED_BYTES:
            return _parse_small(bytes(data))
        return cls._parse(data)

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Parse and check a manifest without keeping it: for a scan of every manifest of a
        cell (repair's look for crowded stripes, `shardvault nodes`), which would gain
        nothing from the cache and push out of it the manifests gets parse again."""
        return cls._parse(data)

    @classmethod
    def _parse(cls, data: bytes) -> Manifest:
        if len(data) < _HEAD.size:
            raise IntegrityError("manifest is truncated")
        magic, version, length = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise IntegrityError("not a shardvault manifest")
        if version > FORMAT_VERSION:
            raise NewerFormat(
                f"manifest format version {version} is newer than this shardvault reads "
                f"(1 to {FORMAT_VERSION}): upgrade shardvault"
            )
        if version not in READS_VERSIONS:
            raise IntegrityError(
                f"manifest format version {version} is not supported (this reads 1 to 3)"
            )
        try:
            # decoded first: json's own detection of a bytes input's encoding costs more
            doc = json.loads(str(data[_HEAD.size : _HEAD.size + length], "utf-8"))
        except ValueError as exc:
            raise IntegrityError("manifest body is not valid JSON") from exc
        hashes = data[_HEAD.size + length :]
        try:
            return cls._from_doc(doc, hashes, version)
        except (AttributeError, KeyError, TypeError, ValueError, InvalidInput) as exc:
            # valid JSON but not a manifest's (a field missing or of another kind): one
            # line naming it, not a traceback from whichever command read it
            why = f"lacks {exc}" if isinstance(exc, KeyError) else f"is malformed: {exc}"
            raise IntegrityError(f"manifest body {why}") from exc

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], hashes: bytes, version: int) -> Manifest:
        manifest = cls(
            ref=ObjectRef(doc["tenant"], doc["subject"], doc["key"]),
            version=doc["version"],
            object_id=bytes.fromhex(doc["object_id"]),
            size=doc["size"],
            segment_size=doc["segment_size"],
            segments=doc["segments"],
            k=doc["k"],
            m=doc["m"],
            backend=doc["backend"],
            nodes=tuple(doc["nodes"]),
            block_size=doc["block_size"],
            last_block_size=doc["last_block_size"],
            block_hashes=hashes,
            wrapped_data_key=base64.b64decode(doc["wrapped_data_key"]),
            subject_key_id=doc["subject_key_id"],
            created_at=doc["created_at"],
            locations=_locations(doc.get("locations", [])),
            generations=_generations(doc.get("generations")) if version >= 3 else (),
        )
        _check_kinds(doc)  # after: a missing field is named in the order above
        if manifest.locations and len(manifest.locations) != manifest.n:
            raise IntegrityError("manifest has a location list of the wrong length")
        if version >= 3 and len(manifest.generations) != manifest.n:
            raise IntegrityError("manifest has a generation list of the wrong length")
        if len(hashes) != manifest.segments * manifest.n * HASH_BYTES:
            raise IntegrityError("manifest block hash table has the wrong length")
        return manifest


_WHOLE_NUMBERS = {  # field: (lowest, highest), the highest what the shard header holds
    "version": (1, 2**64 - 1),
    "size": (0, 2**64 - 1),
    "segment_size": (1, 2**32 - 1),
    "segments": (1, 2**64 - 1),
    "k": (1, 255),
    "m": (0, 255),
    "block_size": (0, 2**32 - 1),
    "last_block_size": (0, 2**32 - 1),
}
_OBJECT_ID_HEX = 32


def _check_kinds(doc: dict[str, Any]) -> None:
    """Refuse a field of another kind here, as damage: taken as it was, a string size or a
    boolean version met arithmetic later as a TypeError (a traceback), and a short object
    id made a header no shard of the stripe could match (docs/formats.md, "Manifest")."""
    for field, (lowest, highest) in _WHOLE_NUMBERS.items():
        value = doc[field]
        if type(value) is not int or not lowest <= value <= highest:
            raise ValueError(f"{field} is {value!r}, not a whole number from {lowest}")
    for field in ("tenant", "subject", "key", "backend", "subject_key_id", "wrapped_data_key"):
        if not isinstance(doc[field], str):
            raise ValueError(f"{field} is {doc[field]!r}, not a string")
    nodes = doc["nodes"]
    if not isinstance(nodes, list) or not all(isinstance(node, str) for node in nodes):
        raise ValueError(f"nodes is {nodes!r}, not a list of node ids")
    created = doc["created_at"]
    if type(created) not in (int, float):
        raise ValueError(f"created_at is {created!r}, not a number of seconds")
    object_id = doc["object_id"]
    if not isinstance(object_id, str) or len(object_id) != _OBJECT_ID_HEX:
        raise ValueError(f"object_id is {object_id!r}, not 16 bytes in hex")


_CACHED_BYTES = 2048  # a single-segment manifest is about 900 bytes


def _locations(found: object) -> tuple[str | None, ...]:
    """Only strings or nulls: a store checks a location's contents before any use."""
    if not isinstance(found, list) or not all(x is None or isinstance(x, str) for x in found):
        raise IntegrityError("manifest locations are not a list of strings")
    return tuple(found)


def _generations(found: object) -> tuple[int, ...]:
    """Whole numbers up to MAX_GENERATION (not booleans), one a shard; one above 0."""
    if (
        not isinstance(found, list)
        or not all(type(x) is int and 0 <= x <= MAX_GENERATION for x in found)
        or not any(found)
    ):
        raise IntegrityError("manifest generations are not a list of shard generations")
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _parse_small(data: bytes) -> Manifest:
    return Manifest._parse(data)
