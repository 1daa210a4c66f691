"""What `Vault.open_read` returns: an object version as a binary file, or iterated.

It wraps the `ObjectReader` that does the reading rather than being one: under
an io base class, every attribute the reader reads of itself in its per-shard
work was slower (CPython 3.11 keeps no inline attribute values for a subclass of
a C type with a dict of its own), 27 k instructions a get (callgrind), and
`Vault.get`, which reads through the reader itself, has no use for a file's
methods. Everything the reader offers is here too: iteration by segment,
`read_all`, `damage`, `info`, the context manager.
"""

from __future__ import annotations

from collections.abc import Iterator

from shardvault.catalog.port import DamageRecord
from shardvault.model import ObjectInfo
from shardvault.vault.reader import ObjectReader
from shardvault.vault.segment_stream import SegmentStream


class ObjectStream(SegmentStream):
    """An object version's plaintext: iterated, segment by segment, or read as a binary
    file (vault/segment_stream.py); one pass, either way. Closed when collected, as a
    file is, so a reader dropped half read lets its shard files go."""

    def __init__(self, reader: ObjectReader) -> None:
        super().__init__()
        self._reader = reader

    def _segments(self) -> Iterator[bytes]:
        """The reader's segments: it refuses a second pass, so reading after iterating,
        or iterating after reading, raises rather than start again or midway."""
        return iter(self._reader)

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def damage(self) -> list[DamageRecord]:
        """The damage read around so far: `Vault.report_damage` queues it for repair."""
        return self._reader.damage

    @property
    def info(self) -> ObjectInfo:
        return self._reader.info

    @property
    def name(self) -> str:
        """The object's key, as a file's name is its path (io.TextIOWrapper's name)."""
        return self._reader.info.ref.key

    @property
    def closed(self) -> bool:
        return self._reader.closed

    def read_all(self) -> bytes:
        return self._reader.read_all()

    def close(self) -> None:
        self._reader.close()
