"""`Vault.open_read`'s reader is a binary file object: read(n) across segments, read(),
readinto, readline, shutil.copyfileobj, io wrappers and tarfile's streaming mode, with
one segment held at a time and the damage it reads around recorded as iteration does."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SEGMENT, frames_of, shard_paths
from shardvault.catalog.port import DamageRecord
from shardvault.errors import VaultClosed
from shardvault.model import ObjectRef
from shardvault.vault import Vault, object_stream
from shardvault.vault.reader import ObjectReader

SIZES = (0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 7)


def payload(size: int) -> bytes:
    """Bytes whose every 4-byte run says where it is: a piece read twice or out of
    place shows."""
    words = (size + 3) // 4
    return b"".join(i.to_bytes(4, "big") for i in range(words))[:size]


def test_reads_of_any_sizes_put_the_object_back_together(vault: Vault, alice: ObjectRef) -> None:
    refs = {}
    for size in SIZES:
        refs[size] = ObjectRef(alice.tenant, alice.subject, f"size-{size}")
        vault.put(refs[size], payload(size))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        size=st.sampled_from(SIZES),
        reads=st.lists(
            st.one_of(
                st.integers(0, 2 * SEGMENT + 3),
                st.sampled_from([1, SEGMENT - 1, SEGMENT, SEGMENT + 1]),
            ),
            min_size=1,
            max_size=12,
        ),
        into=st.booleans(),
    )
    def read_back(size: int, reads: list[int], into: bool) -> None:
        got = bytearray()
        with vault.open_read(refs[size]) as reader:
            turn = 0
            while len(got) < size:  # the reads given, again and again, until the end
                wanted = reads[turn % len(reads)]
                turn += 1
                if into:  # into a memoryview of a larger buffer, as io does
                    buffer = bytearray(wanted + 3)
                    count = reader.readinto(memoryview(buffer)[:wanted])
                    part = bytes(buffer[:count])
                else:
                    part = reader.read(wanted)
                # a file's read returns what was asked for unless the object ends first
                assert len(part) == min(wanted, size - len(got))
                got += part
                if turn > size + 2 * len(reads):  # reads of 0 only: nothing to learn
                    break
            if len(got) == size:
                assert reader.read(5) == b""
                assert reader.read() == b""
                assert reader.readinto(bytearray(4)) == 0
        assert bytes(got) == payload(size)[: len(got)]
        assert len(got) == size or set(reads) == {0}

    read_back()


def test_read_all_of_it_or_the_rest(vault: Vault, alice: ObjectRef) -> None:
    data = payload(3 * SEGMENT + 7)
    vault.put(alice, data)
    with vault.open_read(alice) as reader:
        assert reader.read() == data
        assert reader.read() == b""
    with vault.open_read(alice) as reader:
        assert reader.read(0) == b""
        assert reader.read(10) == data[:10]
        assert reader.read(-1) == data[10:]
    with vault.open_read(alice) as reader:
        assert reader.read(SEGMENT + 3) == data[: SEGMENT + 3]
        assert reader.read(None) == data[SEGMENT + 3 :]


def test_read1_and_peek_hold_one_segment_at_a_time(vault: Vault, alice: ObjectRef) -> None:
    data = payload(2 * SEGMENT + 5)
    vault.put(alice, data)
    with vault.open_read(alice) as reader:
        assert reader.read1(10) == data[:10]
        assert reader.read1() == data[10:SEGMENT]  # the rest of the segment, no further
        assert reader.peek()[:4] == data[SEGMENT : SEGMENT + 4]
        assert reader.read1(-1) == data[SEGMENT : 2 * SEGMENT]  # peek took nothing
        buffer = bytearray(SEGMENT)
        assert reader.readinto1(buffer) == 5
        assert bytes(buffer[:5]) == data[2 * SEGMENT :]
        assert reader.read1() == b""
        assert reader.peek() == b""


def test_it_is_a_readable_binary_stream_that_cannot_seek(vault: Vault, alice: ObjectRef) -> None:
    vault.put(alice, b"data")
    with vault.open_read(alice) as reader:
        assert isinstance(reader, io.BufferedIOBase)
        assert reader.readable()
        assert not reader.seekable()
        assert not reader.writable()
        assert not reader.closed
        with pytest.raises(io.UnsupportedOperation):
            reader.seek(0)
        with pytest.raises(io.UnsupportedOperation):
            reader.fileno()
    assert reader.closed


def test_copyfileobj_and_hashlib_read_it_whole(vault: Vault, alice: ObjectRef) -> None:
    data = payload(2 * SEGMENT + 11)
    vault.put(alice, data)
    out = io.BytesIO()
    with vault.open_read(alice) as reader:
        shutil.copyfileobj(reader, out, length=SEGMENT // 3)
    assert out.getvalue() == data
    with vault.open_read(alice) as reader:
        digest = hashlib.file_digest(reader, "sha256")
    assert digest.digest() == hashlib.sha256(data).digest()


def test_lines_read_through_the_io_wrappers_and_readline(vault: Vault, alice: ObjectRef) -> None:
    lines = [f"line {i} {'x' * (i % 97)}\n".encode() for i in range(3000)]
    data = b"".join(lines)
    assert len(data) > 2 * SEGMENT
    vault.put(alice, data)
    with vault.open_read(alice) as reader:
        assert reader.readline() == lines[0]
        assert reader.readlines(1) == [lines[1]]
        assert reader.readlines() == lines[2:]  # lines, not segments
    with vault.open_read(alice) as reader:
        text = io.TextIOWrapper(reader, encoding="ascii")
        assert text.name == alice.key
        assert text.readlines() == [line.decode() for line in lines]
    with vault.open_read(alice) as reader:
        buffered = io.BufferedReader(reader, buffer_size=1000)
        assert buffered.read() == data


def test_tarfile_streams_an_archive_out_of_it(vault: Vault, alice: ObjectRef) -> None:
    members = {"a.txt": payload(SEGMENT + 9), "b/c.bin": payload(3 * SEGMENT)}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    vault.put(alice, archive.getvalue())
    found = {}
    with vault.open_read(alice) as reader, tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            found[member.name] = extracted.read()
    assert found == members


def _seen(damage: list[DamageRecord]) -> list[tuple[int, int, str, str]]:
    return [(d.segment, d.index, d.node, d.reason) for d in damage]


def test_damage_read_around_by_small_reads_is_recorded_as_by_iteration(
    vault: Vault, alice: ObjectRef
) -> None:
    data = payload(3 * SEGMENT + 7)
    vault.put(alice, data)
    first, _, third = shard_paths(vault, alice)[:3]
    raw = bytearray(third.read_bytes())
    raw[-5] ^= 0x10  # the last segment's block of shard 2
    third.write_bytes(bytes(raw))
    first.unlink()  # shard 0: missing for every segment
    with vault.open_read(alice) as iterated:
        assert b"".join(iterated) == data
    with vault.open_read(alice) as streamed:
        got = bytearray()
        while part := streamed.read(SEGMENT // 2 + 1):
            got += part
    assert bytes(got) == data
    assert _seen(streamed.damage) == _seen(iterated.damage)
    assert {(d.segment, d.index, d.reason) for d in streamed.damage} >= {
        (0, 0, "missing"),
        (3, 2, "hash mismatch"),
    }
    assert vault.report_damage(streamed.damage) == streamed.damage


@pytest.mark.parametrize("read_first", [0, SEGMENT - 10, SEGMENT])
def test_a_read_after_close_raises_what_iteration_raises(
    vault: Vault, alice: ObjectRef, read_first: int
) -> None:
    data = payload(3 * SEGMENT)
    vault.put(alice, data)
    iterated = vault.open_read(alice)
    segments = iter(iterated)
    for _ in range(1 if read_first else 0):
        next(segments)
    iterated.close()
    with pytest.raises(Exception) as by_iteration:
        next(segments)
    streamed = vault.open_read(alice)
    assert streamed.read(read_first) == data[:read_first]
    streamed.close()
    held = -read_first % SEGMENT  # verified plaintext in hand is still given
    assert streamed.read(held) == data[read_first : read_first + held]
    reads: list[Callable[[], object]] = [
        lambda: streamed.read(1),
        lambda: streamed.read(),
        lambda: streamed.readinto(bytearray(3)),
    ]
    for read in reads:  # each time: a read that failed once is no end of the object
        with pytest.raises(type(by_iteration.value), match=re.escape(str(by_iteration.value))):
            read()
    assert streamed.damage == []


def test_iterating_after_reading_is_refused(vault: Vault, alice: ObjectRef) -> None:
    """One pass through the object: iteration after reads raises, as a second iteration
    does, rather than yield the object from the start or from somewhere in the middle."""
    vault.put(alice, payload(2 * SEGMENT))
    with vault.open_read(alice) as reader:
        reader.read(3)
        with pytest.raises(RuntimeError, match="read once"):
            next(iter(reader))


def test_a_reader_iterated_without_with_stays_open_until_its_last_segment(
    vault: Vault, alice: ObjectRef
) -> None:
    """The loop holds only what iter() gave: were that the wrapped reader's iterator,
    the stream would be collected, and close its reader, before the first segment."""
    vault.put(alice, payload(3 * SEGMENT + 7))
    got = bytearray()
    for segment in vault.open_read(alice):
        gc.collect()
        got += segment
    assert bytes(got) == payload(3 * SEGMENT + 7)


def test_get_reads_through_the_reader_itself_not_a_file_wrapper(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A get has no use for a file's methods, and an io base made each of the reader's
    own attribute reads slower (vault/object_stream.py): the get path never wraps."""
    vault.put(alice, payload(SEGMENT + 1))

    def wrapped(*args: object) -> None:
        raise AssertionError("Vault.get built a file wrapper")

    monkeypatch.setattr(object_stream.ObjectStream, "__init__", wrapped)
    assert vault.get(alice) == payload(SEGMENT + 1)
    assert not issubclass(ObjectReader, io.IOBase)


def test_next_gives_the_segment_a_for_loop_gives(vault: Vault, alice: ObjectRef) -> None:
    """next(reader) and `for segment in reader` are one iteration, by segment: io's
    __next__ alone would give a line, and the loop its own generator."""
    data = b"line\n" * (3 * SEGMENT // 5 + 1)
    vault.put(alice, data)
    with vault.open_read(alice) as reader:
        first = next(reader)
        rest = list(reader)
    assert len(first) == SEGMENT
    assert first + b"".join(rest) == data
    assert [len(segment) for segment in rest] == [SEGMENT, SEGMENT, len(data) - 3 * SEGMENT]


@pytest.mark.parametrize(
    "way", ["read", "read1", "readinto", "next", "readline", "readlines", "peek"]
)
def test_two_threads_reading_one_reader_share_the_object_out_exactly_once(
    vault: Vault, alice: ObjectRef, way: str
) -> None:
    """Each read is whole, as io.BufferedReader's are under its lock: two threads reading
    one reader get pieces that are each a run of the object, and together all of it
    once, never one segment fetched by both (a generator already executing). A peek
    takes bytes and puts them back: one read between would be read again, or lost."""
    size = 24 * SEGMENT + SEGMENT // 2  # no piece so short it could be found elsewhere
    if way == "readline":
        data = (b"x" * 99 + b"\n") * (size // 100)
    elif way == "readlines":  # lines told apart: each call's lines must be one run
        data = b"".join(b"%099d\n" % line for line in range(size // 100))
    else:
        data = payload(size)
    vault.put(alice, data)
    reader = vault.open_read(alice)
    pieces: list[tuple[int, bytes]] = []
    failures: list[BaseException] = []
    peeked: list[bytes] = []
    start = threading.Barrier(2)

    def take() -> bytes:
        if way == "read":
            return reader.read(SEGMENT // 3)
        if way == "read1":
            return reader.read1(SEGMENT // 2)  # a segment's end leaves no short piece
        if way == "readlines":
            return b"".join(reader.readlines(SEGMENT // 3))
        if way == "readinto":
            buffer = bytearray(SEGMENT // 3)
            return bytes(buffer[: reader.readinto(buffer)])
        if way == "readline":
            return reader.readline()
        if way == "peek":  # at each segment's end, the peek fetches the next
            peeked.append(reader.peek())
            return reader.read(SEGMENT // 2)
        return next(reader, b"")

    def work() -> None:
        start.wait()
        try:
            while piece := take():
                pieces.append((data.find(piece) if way != "readline" else 0, piece))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.close()
    assert failures == []
    if way == "readline":
        assert [piece for _, piece in pieces] == data.splitlines(keepends=True)
        return
    assert all(at >= 0 for at, _ in pieces)  # each piece is a run of the object
    assert b"".join(piece for _, piece in sorted(pieces)) == data
    assert all(data.find(bytes_) >= 0 for bytes_ in peeked)


def test_a_stream_closed_by_another_thread_mid_read_says_so_and_records_no_damage(
    vault: Vault, alice: ObjectRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the close closed the shard a block was being read from: the read failed (EBADF),
    # the reader took it for damage, and the spares (refused: closed) too, and raised an
    # IntegrityError asking to bring a node back or restore from a backup, its records
    # sending repair after three sound shards
    data = payload(3 * SEGMENT)
    vault.put(alice, data)
    shard = str(shard_paths(vault, alice)[0])
    reading, closed = threading.Event(), threading.Event()
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        if offset and not reading.is_set() and os.readlink(f"/proc/self/fd/{fd}") == shard:
            reading.set()  # segment 1's block of shard 0: the caller waits for it
            closed.wait(30)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    stream = vault.open_read(alice)
    failed: list[BaseException] = []

    def read() -> None:
        try:
            stream.read()
        except BaseException as exc:
            failed.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    assert reading.wait(10)
    collect, end = ObjectReader._collect.__code__, time.monotonic() + 30
    while not any(  # the caller waits for segment 1's blocks: the close comes now
        frame.f_code is collect and frame.f_locals["segment"] == 1 for frame in frames_of(reader)
    ):
        assert reader.is_alive() and time.monotonic() < end, list(frames_of(reader))
        time.sleep(0.01)
    stream.close()
    closed.set()
    reader.join(10)
    assert [type(exc) for exc in failed] == [VaultClosed], failed
    assert "was closed: open another" in str(failed[0])
    assert stream.damage == []
