"""The get pipeline: read any k verified blocks per segment, decode, decrypt, stream.

Blocks are read and hashed in the I/O pool, the data blocks first (the code is
systematic, so those decode by concatenation). A block that is missing,
short, or whose hash differs from the manifest is an erasure: the reader takes
another shard and records the damage for repair. With fewer than k good
blocks it raises IntegrityError naming the object and segment; it never
returns bytes that did not verify. The next segments are fetched while the
current one is decoded and decrypted (`READ_AHEAD`); a segment started before
the reader learned that a shard is unusable, or that the catalog moved a copy,
is started again as it would be now, so reading ahead records no damage and
waits for no hung node that reading one segment at a time would not.

The first segment's fetch starts when the reader is made, before it holds a
key: the vault hands over the cipher (`unlock`) only once the access's audit
entry is durable and the custodian has released the key, so reading and
verifying shards overlaps that wait. Each shard's header is read with its first
block, in one read.

A block fetched on an I/O thread is waited for until the nodes' deadline at most
(vault/deadline.py): a node whose disk hangs is then marked unavailable, its
shard counted as an erasure, and another read; the read given up on keeps the node
so until it ends. A reader opened before another marked a node so keeps its real
store, but asks it nothing while it is hung: its shard fails at once, as with the
`HungStore` that readers opened after hold, and a segment started ahead that waits
on it is started again. A small object's shards are read in the calling thread
when the page cache holds them (`ShardStore.read_cached`: a read that cannot wait
for the disk; a hand-off per get would cost more than the reads), and otherwise on
an I/O thread, waited for as a large object's.

A segment that cannot be read with the copies the reader's manifest names has the
catalog asked for the version's manifest as it is now (`reload`): a get that loaded
it before a repair's or spread's swap reads the copies the swap replaced, which gc
deletes after its grace period. If the catalog names other copies for some shards,
the same stripe otherwise, the segment is read again from those; if it names the
same ones, the segment is lost. If the version is no longer committed, it was
deleted (or forgotten) since the get looked it up and gc took its shards: that is
NotFound, with no damage recorded, not an integrity error. Only that failure asks:
a get that reads its segments pays no query for it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Executor, Future
from dataclasses import replace
from typing import NamedTuple, TypeAlias

from shardvault.catalog.port import DamageRecord
from shardvault.codec.erasure import ErasureCode
from shardvault.codec.hashing import block_matches
from shardvault.codec.segment import TAG_BYTES, SegmentCipher
from shardvault.codec.shardfile import block_offset
from shardvault.errors import IntegrityError, NotFound, ShardvaultError, VaultClosed
from shardvault.manifest import Manifest
from shardvault.model import ObjectInfo
from shardvault.nodes.port import ShardReader, ShardStore
from shardvault.vault.deadline import NodeDeadline
from shardvault.vault.unreadable_segment import unreadable_segment
from shardvault.vault.views import info_of

INLINE_BLOCK = 64 << 10
READ_AHEAD = 4
"""Segments fetched ahead of the one being decrypted: with one, a 256 MiB get's calling
thread waited for blocks half the time, the I/O threads idle while it took their
results; four read it up to a third faster on a slowed VM (docs/performance.md,
twenty-eighth round). Each costs a segment's k blocks of memory."""
_UNUSABLE = frozenset({"missing", "bad header", "truncated"})  # for every later segment too


class _Fetched(NamedTuple):
    """Shard ``shard``'s block, or None and why. Made for every shard a get reads: a
    tuple, which costs half what a frozen dataclass does to make."""

    shard: int
    block: bytes | None
    reason: str = ""


_Pending: TypeAlias = "Future[_Fetched] | _Fetched"
_Started: TypeAlias = "tuple[Manifest, list[tuple[int, _Pending]]]"
"""A segment's fetches, with the manifest they were started under."""
Reload: TypeAlias = Callable[[], "tuple[Manifest, list[ShardStore]] | None"]
"""The version's manifest as the catalog holds it now, with its nodes' stores; None
if the version is no longer committed (deleted or forgotten)."""


def _open_shard(
    store: ShardStore, name: str, location: str | None
) -> tuple[ShardReader | None, str]:
    """The shard's reader, or None and why it cannot be had (damage, not an error)."""
    try:
        return store.open_reader(name, location), ""
    except NotFound:
        return None, "missing"
    except ShardvaultError as exc:
        return None, f"unreadable: {exc}"


class _ShardHandle:
    """Opens a shard once, checks its header and keeps its first block, then serves reads."""

    def __init__(
        self,
        store: ShardStore,
        name: str,
        location: str | None,
        header: bytes,
        first_length: int,
    ) -> None:
        self.reader: ShardReader | None = None
        self.first_block: bytes | None = None
        reader, self.problem = _open_shard(store, name, location)
        if reader is None:
            return
        try:
            head = reader.read_at(0, len(header) + first_length)
        except OSError as exc:
            reader.close()
            self.problem = f"read failed: {exc.strerror}"
            return
        # every field, not just the ones the read uses: a flipped bit anywhere is damage
        if head[: len(header)] != header:
            reader.close()
            self.problem = "bad header"
            return
        self.reader = reader
        self.first_block = head[len(header) :] if first_length else None


def _cancel(fetches: list[tuple[int, _Pending]]) -> None:
    """Cancel the fetches not yet running; one running finishes, and nothing takes its
    result (its shard's handle is kept only if it is still this reader's)."""
    for _, item in fetches:
        if isinstance(item, Future):
            item.cancel()


def _copy_of(manifest: Manifest, index: int) -> tuple[str, str | None, int]:
    """Which copy of shard index the manifest names: its node, location and generation."""
    return manifest.nodes[index], manifest.location(index), manifest.generation(index)


class ObjectReader:
    """Iterates an object version's plaintext, segment by segment, once.

    `Vault.get` reads through it; `Vault.open_read` hands it out wrapped as a binary
    file (`ObjectStream`, vault/object_stream.py), not as a subclass of io's: under
    an io base every attribute this class reads of itself was slower (CPython 3.11
    keeps no inline attribute values for a subclass of a C type with a dict of its
    own), 27 k instructions a get, about 3.5 %.
    """

    def __init__(
        self,
        *,
        manifest: Manifest,
        stores: list[ShardStore],
        code: ErasureCode,
        pool: Executor,
        deadline: NodeDeadline | None = None,
        reload: Reload | None = None,
    ) -> None:
        self.damage: list[DamageRecord] = []
        self._manifest = manifest
        self._cipher: SegmentCipher | None = None
        self._stores = stores
        self._reload = reload
        self._code = code
        self._pool = pool
        self._deadline = deadline
        # the nodes hung now, found by any reader of the process: usually empty
        self._hung: Collection[str] = () if deadline is None else deadline.probes
        self._handles: dict[int, _ShardHandle] = {}
        self._handles_lock = threading.Lock()
        self._bad: set[int] = set()
        self._closed = False
        self._inline = manifest.segments == 1 and manifest.last_block_size <= INLINE_BLOCK
        self._read = False
        self._ahead: list[_Started] = [(manifest, self._start(0))]  # a few: no deque

    @functools.cached_property
    def info(self) -> ObjectInfo:
        """What stat shows of the version; built on demand, since a get never asks."""
        return info_of(self._manifest)

    def _segment_name(self, segment: int) -> str:
        return f"{self._manifest.ref} v{self._manifest.version} segment {segment}"

    def unlock(self, cipher: SegmentCipher) -> None:
        """Hand over the object's cipher: only now can the plaintext be read."""
        self._cipher = cipher

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _handle(self, index: int, segment: int) -> _ShardHandle:
        # Opened inside the fetching task, never as a task of its own: a pool
        # task that waited on another could deadlock a saturated pool. Opened
        # outside the lock, so the shards' first reads run in parallel.
        with self._handles_lock:
            found = self._handles.get(index)
        if found is not None:
            return found
        manifest, stores = self._manifest, self._stores
        name, location, header = manifest.copy(index)
        handle = _ShardHandle(
            stores[index], name, location, header, manifest.block_length(0) if segment == 0 else 0
        )
        with self._handles_lock:
            # a fetch given up on a hung node may finish after a reload: its copy is not kept
            current = manifest is self._manifest
            found = self._handles.setdefault(index, handle) if current else handle
            if handle.reader is not None and (found is not handle or self._closed or not current):
                # opened twice, or a prefetch that finished after close(): do not leak it,
                # nor keep its first block in a closed reader's handles
                handle.reader.close()
                handle.reader, handle.problem, handle.first_block = None, "reader closed", None
            return found

    def _fetch(self, segment: int, index: int) -> _Fetched:
        handle = self._handle(index, segment)
        if handle.reader is None:
            return _Fetched(index, None, handle.problem)
        if segment == 0 and handle.first_block is not None:
            block, handle.first_block = handle.first_block, None
        else:
            offset = block_offset(segment, self._manifest.block_size)
            try:
                block = handle.reader.read_at(offset, self._manifest.block_length(segment))
            except OSError as exc:
                return _Fetched(index, None, f"read failed: {exc.strerror}")
        return self._checked(index, segment, block, 0)

    def _fetch_cached(self, index: int) -> _Fetched | None:
        """A small single-segment object's shard, if its store has it without waiting for
        the disk (the page cache); None if not: it is then read on an I/O thread, where
        a node that hangs costs no more than the deadline."""
        manifest = self._manifest
        name, location, header = manifest.copy(index)
        length = len(header) + manifest.block_length(0)
        try:
            head = self._stores[index].read_cached(name, location, length)
        except ShardvaultError as exc:  # unavailable, or marked hung
            return _Fetched(index, None, f"unreadable: {exc}")
        return None if head is None else self._checked(index, 0, head, len(header), header)

    def _fetch_whole(self, index: int) -> _Fetched:
        """A small single-segment object's shard: header and block in one read.

        No handle is kept (the shard is read once), so none of the bookkeeping
        that lets a large object's segments share an open shard.
        """
        manifest = self._manifest
        name, location, header = manifest.copy(index)
        length = manifest.block_length(0)
        reader, problem = _open_shard(self._stores[index], name, location)
        if reader is None:
            return _Fetched(index, None, problem)
        try:
            head = reader.read_at(0, len(header) + length)
        except OSError as exc:
            return _Fetched(index, None, f"read failed: {exc.strerror}")
        finally:
            reader.close()
        return self._checked(index, 0, head, len(header), header)

    def _checked(
        self, index: int, segment: int, data: bytes, start: int, header: bytes = b""
    ) -> _Fetched:
        """The block at data[start:], if the header before it and its hash are right."""
        # every header field, not just the ones the read uses: a flipped bit is damage
        if data[:start] != header:
            return _Fetched(index, None, "bad header")
        block = data[start:] if start else data
        if len(block) != self._manifest.block_length(segment):
            return _Fetched(index, None, "truncated")
        if not block_matches(block, self._manifest.block_hash(segment, index)):
            return _Fetched(index, None, "hash mismatch")
        return _Fetched(index, block)

    def _submit(self, segment: int, index: int) -> Future[_Fetched] | _Fetched:
        """Fetch in the pool; a small single-segment object's shard is fetched right here
        when the page cache has it, where a read costs less than a hand-off."""
        if self._inline:
            cached = self._fetch_cached(index)
            if cached is not None:
                return cached
            return self._pool.submit(self._fetch_whole, index)
        return self._pool.submit(self._fetch, segment, index)

    def _start(self, segment: int) -> list[tuple[int, _Pending]]:
        wanted = [i for i in range(self._manifest.n) if i not in self._bad][: self._code.k]
        if self._hung:  # rare: a node is hung now
            return [(index, self._submit_unless_hung(segment, index)) for index in wanted]
        return [(index, self._submit(segment, index)) for index in wanted]

    def _submit_unless_hung(self, segment: int, index: int) -> _Pending:
        """`_submit`, but a shard on a node hung now fails at once, as with the
        `HungStore` that readers opened after the node was marked hold: this one may
        hold the real store, and asking it cost a deadline's wait and a stuck thread a
        segment, though another reader had found the node hung. Looked up at each
        fetch, so a node a probe brings back is read again."""
        node = self._manifest.nodes[index]
        if node in self._hung and self._deadline is not None:
            return _Fetched(index, None, f"unreadable: {self._deadline.unanswered(node)}")
        return self._submit(segment, index)

    def _waits_on_hung(self, fetches: list[tuple[int, _Pending]]) -> bool:
        """Whether a fetch not yet done asks a node hung now (found so by another reader,
        perhaps, after the fetch was started)."""
        nodes, hung = self._manifest.nodes, self._hung
        return any(
            isinstance(item, Future) and not item.done() and nodes[index] in hung
            for index, item in fetches
        )

    def _current(self, segment: int, started: _Started) -> list[tuple[int, _Pending]]:
        """The segment's fetches as `_start` would make them now: if since they were
        started a shard they read was found unusable (or its node hung), one waits on a
        node any reader found hung since, or the catalog named other copies, they are
        dropped and the segment started again. Rare: only after damage, a hang or a
        repair's swap."""
        manifest, fetches = started
        if (
            manifest is self._manifest
            and (not self._bad or self._bad.isdisjoint(i for i, _ in fetches))
            and (not self._hung or not self._waits_on_hung(fetches))
        ):
            return fetches
        _cancel(fetches)
        return self._start(segment)

    def _note_damage(self, segment: int, fetched: _Fetched) -> None:
        """Record the damage; a shard unusable for the rest of the object is not read again.

        A truncated shard is that too: it ends before this block, so every later block
        is short. Tried again, it cost a read and a damage record (a catalog row) per
        segment, without bound for a large object; one record names it for repair.
        """
        if fetched.reason in _UNUSABLE:
            self._bad.add(fetched.shard)
        self.damage.append(
            DamageRecord(
                ref=self._manifest.ref,
                version=self._manifest.version,
                segment=segment,
                index=fetched.shard,
                node=self._manifest.nodes[fetched.shard],
                reason=fetched.reason,
                seen_at=time.time(),
            )
        )

    def _waited(self, pending: list[tuple[int, _Pending]]) -> Iterator[_Fetched]:
        """Each fetch's result, waiting for a node until the deadline at most: a node
        past it is marked hung (vault/deadline.py) and its shard is an erasure."""
        seconds = None if self._deadline is None else self._deadline.seconds
        end = None if seconds is None else time.monotonic() + seconds
        for index, item in pending:
            if isinstance(item, _Fetched):
                yield item
                continue
            try:
                yield item.result(None if end is None else max(0.0, end - time.monotonic()))
            except TimeoutError:
                if item.done():  # the fetch's own TimeoutError
                    raise
                assert self._deadline is not None
                item.cancel()
                self._bad.add(index)  # not asked again for the rest of the object
                # the read stuck in it keeps the node hung: a probe's flush may answer
                # while the read does not, and the gets after would stick there too
                hung = self._deadline.expired(self._manifest.nodes[index], item)
                yield _Fetched(index, None, f"unreadable: {hung}")

    def _collect(self, segment: int, started: list[tuple[int, _Pending]]) -> list[bytes]:
        # every shard read and checked here already (a small object's, from the page
        # cache): no wait, no bookkeeping; `started` is in index order, as is the result
        here = [item.block for _, item in started if isinstance(item, _Fetched)]
        if len(here) == self._code.k and None not in here:
            return here  # type: ignore[return-value]  # None is not in it
        good: dict[int, bytes] = {}
        # a shard unusable for the rest of the object is not asked again, not even as a
        # spare: one on a hung node cost a deadline's wait and a stuck thread each time
        tried = set(self._bad)
        pending = started
        while True:
            for fetched in self._waited(pending):
                tried.add(fetched.shard)
                if fetched.block is None:
                    if self._closed:  # its shard closed under it, perhaps: not damage
                        raise self._reader_closed()
                    self._refuse_if_closed(segment)
                    self._note_damage(segment, fetched)
                else:
                    good[fetched.shard] = fetched.block
            missing = self._code.k - len(good)
            if missing <= 0:
                return [good[index] for index in sorted(good)][: self._code.k]
            spare = [i for i in range(self._manifest.n) if i not in tried]
            if not spare:  # each shard tried: read the ones the catalog now names elsewhere
                moved = self._reloaded(segment)
                if moved is None:
                    raise self._gone(segment)
                tried -= moved - good.keys()
                spare = [i for i in range(self._manifest.n) if i not in tried]
            if not spare:
                raise unreadable_segment(
                    self._segment_name(segment),
                    len(good),
                    self._code.k,
                    self._failures(segment, tried),
                )
            pending = [(i, self._submit_unless_hung(segment, i)) for i in spare[:missing]]

    def _failures(self, segment: int, tried: set[int]) -> list[DamageRecord]:
        """Why each shard tried for the segment gave no block: its record of the segment,
        or, for one unusable since an earlier segment (not asked again), the record that
        found it so, its last."""
        last = {
            d.index: d
            for d in self.damage
            if d.index in tried and (d.segment == segment or d.index in self._bad)
        }
        return list(last.values())

    def _reader_closed(self) -> VaultClosed:
        """What a closed reader raises: its shards are closed, so reading them would look
        like damage, and a read started after close() would do I/O (on a hung node, a
        thread each) only to be refused. A fetch that failed once another thread closed
        the reader failed for the close. (Looked for inline: a small get pays no call.)"""
        return VaultClosed(
            f"the reader of {self._manifest.ref} v{self._manifest.version} was closed: "
            "open another (Vault.open_read) to read it"
        )

    def _refuse_if_closed(self, segment: int) -> None:
        """Refuse a segment once the vault closed. A fetch that failed then may have had
        its store closed under it (the close does not wait for the I/O threads while a
        node is hung), so the failure is the close's, not damage: no record sends repair
        after a sound shard. A segment fetched ahead before the close is refused too, so
        what a reader gives after its vault closed does not hang on how far it read ahead."""
        if self._deadline is not None and self._deadline.closed:
            raise VaultClosed(
                f"the vault was closed while {self._segment_name(segment)} was read: "
                "open it again to read it"
            )

    def _gone(self, segment: int) -> NotFound:
        """The version was deleted (or its subject forgotten) since the get looked it up,
        and gc took its shards: no damage, so none is recorded for repair to chase."""
        self.damage = []
        return NotFound(
            f"{self._manifest.ref} v{self._manifest.version} was deleted or forgotten while "
            f"it was being read (segment {segment}); nothing is damaged: get the key again "
            "for its current version, if it has one"
        )

    def _reloaded(self, segment: int) -> set[int] | None:
        """The shards the catalog's manifest now names other copies of, read from there
        from now on; none if it names the same ones or its manifest is not this stripe's
        but for where its shards are (then nothing is changed); None if the version is
        no longer committed.

        The failed attempt's damage records of those shards go: they name copies no
        manifest names (gone is no damage), and repair would check the version for them.
        """
        if self._reload is None:
            return set()
        found = self._reload()
        if found is None:
            return None
        manifest, stores = found
        old = self._manifest
        where = replace(
            manifest, nodes=old.nodes, locations=old.locations, generations=old.generations
        )
        if where != old:  # not this stripe: its hashes are not the ones the reader checked
            return set()
        moved = {i for i in range(old.n) if _copy_of(manifest, i) != _copy_of(old, i)}
        if not moved:
            return moved
        with self._handles_lock:
            self._manifest, self._stores = manifest, stores
            stale = [self._handles.pop(i) for i in moved if i in self._handles]
        for handle in stale:
            if handle.reader is not None:
                handle.reader.close()
        self._bad -= moved
        self.damage = [d for d in self.damage if d.segment != segment or d.index not in moved]
        return moved

    def __iter__(self) -> Iterator[bytes]:
        manifest, cipher = self._manifest, self._cipher
        if cipher is None:
            raise RuntimeError("ObjectReader iterated before unlock(): no key was released")
        if self._read:
            raise RuntimeError("an ObjectReader is read once")
        self._read = True
        if self._closed:  # before the segments ahead are started
            raise self._reader_closed()
        ahead = self._ahead
        for segment in range(1, min(READ_AHEAD, manifest.segments)):
            ahead.append((self._manifest, self._start(segment)))
        for segment in range(manifest.segments):
            if self._closed:
                raise self._reader_closed()
            if segment:  # (a small get's one segment pays no look)
                self._refuse_if_closed(segment)
            try:
                started = ahead.pop(0)
            except IndexError:  # close() let go of it since the look above
                raise self._reader_closed() from None
            blocks = self._collect(segment, self._current(segment, started))
            if segment + READ_AHEAD < manifest.segments:
                ahead.append((self._manifest, self._start(segment + READ_AHEAD)))
                if self._closed:  # close() may have let go of the others before this one
                    self._let_go()
            sealed = self._code.decode(blocks)
            expected = manifest.segment_length(segment) + TAG_BYTES
            if len(sealed) != expected:
                raise IntegrityError(
                    f"{self._segment_name(segment)}: decoded "
                    f"{len(sealed)} bytes, expected {expected}"
                )
            try:
                plaintext = cipher.open(segment, sealed)
            except IntegrityError:
                raise IntegrityError(
                    f"{self._segment_name(segment)}: failed authentication"
                ) from None
            # not held while the caller holds the segment: a stream kept after close() would
            # keep them (a segment's blocks and its ciphertext) until it is dropped
            del started, blocks, sealed
            yield plaintext

    def read_all(self) -> bytes:
        return b"".join(self)

    def _let_go(self) -> None:
        """Cancel the fetches started ahead and drop them, the finished ones' blocks with
        them: a reader kept after close() (a server's, a caller's) held up to
        `READ_AHEAD` segments' blocks until it was itself dropped. One running finishes
        on its I/O thread, and nothing keeps its result."""
        ahead = self._ahead
        while ahead:
            try:
                _, fetches = ahead.pop()
            except IndexError:  # the read took the last one meanwhile
                return
            _cancel(fetches)

    def close(self) -> None:
        with self._handles_lock:
            first, self._closed = not self._closed, True
            handles = list(self._handles.values()) if first else []
        self._let_go()  # after the flag: the read lets go of a segment it starts after this
        for handle in handles:
            if handle.reader is not None:
                handle.reader.close()
