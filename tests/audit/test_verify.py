"""Export and verification: every single mutation of a sample log must be detected."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.audit.conftest import (
    LOG_SIGNER,
    LOG_VKEY,
    ORIGIN,
    WITNESS,
    WITNESS_VKEY,
    make_entry,
    publish_head,
)

from shardvault.audit import export
from shardvault.audit import verify as verify_module
from shardvault.audit.checkpoint import Checkpoint, sign_checkpoint
from shardvault.audit.export import export_to_directory, export_to_file
from shardvault.audit.log import AuditLog
from shardvault.audit.note import Cosigner, NoteSigner, NoteVerifier, SignedNote
from shardvault.audit.verify import verify_export
from shardvault.errors import IntegrityError, InvalidInput, NotFound, StorageError

N_ENTRIES = 50
HEAD_SIZES = (1, 10, 23, 37, 50)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A 50-entry log with five cosigned heads, exported to a directory."""
    base = tmp_path_factory.mktemp("sample")
    log = AuditLog.open(base / "log")
    previous = None
    for i in range(N_ENTRIES):
        log.append(make_entry(i, decision="deny" if i % 5 == 0 else "allow"))
        if i + 1 in HEAD_SIZES:
            previous = publish_head(log, previous, timestamp=1_760_000_000 + i)
    export_to_directory(log, base / "export")
    export_to_file(log, base / "export.tar")
    trusted = log.heads()[-1].to_bytes()
    log.close()
    return base / "export", trusted


def verify(path: Path, trusted: bytes | None = None) -> None:
    verify_export(path, LOG_VKEY, cosigner_key=WITNESS_VKEY, trusted_head=trusted, origin=ORIGIN)


def test_intact_export_verifies(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    report = verify_export(export, LOG_VKEY, cosigner_key=WITNESS_VKEY, trusted_head=trusted)
    assert report.entries == N_ENTRIES and report.origin == ORIGIN
    assert [h.checkpoint.size for h in report.heads] == list(HEAD_SIZES)
    assert all(h.cosigned_at for h in report.heads)
    report = verify_export(export.with_suffix(".tar"), LOG_VKEY, cosigner_key=WITNESS_VKEY)
    assert report.entries == N_ENTRIES


def lines_of(export: Path) -> list[bytes]:
    return (export / "entries.jsonl").read_bytes().splitlines(keepends=True)


def detected(export: Path, trusted: bytes, name: str, data: bytes) -> bool:
    """Write ``data`` as ``name``, verify, restore; True if verification failed."""
    target = export / name
    original = target.read_bytes()
    target.write_bytes(data)
    try:
        verify(export, trusted)
    except IntegrityError:
        return True
    finally:
        target.write_bytes(original)
    return False


def test_every_entry_mutation_is_detected(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    lines = lines_of(export)
    rogue = make_entry(999).to_bytes() + b"\n"
    missed = []
    for i, line in enumerate(lines):
        mutations: dict[str, list[bytes]] = {}
        for pos in {0, len(line) // 3, len(line) // 2, len(line) - 3, len(line) - 1}:
            flipped = bytearray(line)
            flipped[pos] ^= 0x01
            mutations[f"flip byte {pos}"] = [*lines[:i], bytes(flipped), *lines[i + 1 :]]
        mutations["delete"] = lines[:i] + lines[i + 1 :]
        mutations["insert before"] = [*lines[:i], rogue, *lines[i:]]
        mutations["duplicate"] = [*lines[: i + 1], line, *lines[i + 1 :]]
        if i + 1 < len(lines):
            mutations["swap with next"] = [*lines[:i], lines[i + 1], line, *lines[i + 2 :]]
        mutations["truncate here"] = lines[:i]
        for what, new in mutations.items():
            if not detected(export, trusted, "entries.jsonl", b"".join(new)):
                missed.append((i, what))
    mutations_append = [*lines, rogue]
    if not detected(export, trusted, "entries.jsonl", b"".join(mutations_append)):
        missed.append(("end", "append"))
    assert missed == []


def test_every_head_byte_mutation_is_detected(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    missed = []
    for size in HEAD_SIZES:
        name = f"heads/{size:020d}.note"
        original = (export / name).read_bytes()
        for pos in range(len(original)):
            for flip in (0x01, 0x80) if pos % 7 == 0 else (0x01,):
                changed = bytearray(original)
                changed[pos] ^= flip
                if not detected(export, trusted, name, bytes(changed)):
                    missed.append((size, pos, flip))
        if not detected(export, trusted, name, original[:-1]):
            missed.append((size, "truncated"))
    assert missed == []


def forked_head(size: int) -> bytes:
    """A head genuinely signed by the cell's key, for another tree of the same size: a fork."""
    checkpoint = Checkpoint(ORIGIN, size, bytes(32))
    note = sign_checkpoint(checkpoint, LOG_SIGNER)
    return note.with_signature(WITNESS.sign_at(note.text, 1_760_000_100)).to_bytes()


@pytest.mark.parametrize("size", HEAD_SIZES)
def test_forked_head_in_export_is_detected(sample: tuple[Path, bytes], size: int) -> None:
    export, trusted = sample
    assert detected(export, trusted, f"heads/{size:020d}.note", forked_head(size))


def test_forked_trusted_head_is_detected(sample: tuple[Path, bytes]) -> None:
    export, _ = sample
    for size in HEAD_SIZES:
        with pytest.raises(IntegrityError, match=r"forked|do not match"):
            verify(export, forked_head(size))


def test_export_that_stops_short_of_the_trusted_head_is_detected(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    export, trusted = sample
    short = tmp_path / "short"
    shutil.copytree(export, short)
    (short / "heads" / f"{50:020d}.note").unlink()
    lines = lines_of(short)[:37]
    (short / "entries.jsonl").write_bytes(b"".join(lines))
    verify(short)  # self-consistent on its own...
    with pytest.raises(IntegrityError, match="entries are missing"):
        verify(short, trusted)  # ...but the partner's head proves entries were cut


def test_head_signed_by_another_key_or_missing_cosignature_fails(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    export, _ = sample
    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match="not signed by"):
        verify_export(export, stranger.verifier_key())
    other_witness = Cosigner("partner.example/witness", Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match="not signed by"):
        verify_export(export, LOG_VKEY, cosigner_key=other_witness.verifier_key())
    with pytest.raises(InvalidInput):
        verify_export(export, "not-a-key")


def test_unexpected_or_missing_files_and_unknown_format_fail(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    export, trusted = sample
    for change in (
        lambda p: (p / "extra.txt").write_text("x"),
        lambda p: (p / "FORMAT").write_text("shardvault-audit-export\nversion 2\n"),
        lambda p: (p / "entries.jsonl").unlink(),
        lambda p: shutil.rmtree(p / "heads"),
        lambda p: (p / "heads" / f"{50:020d}.note").rename(p / "heads" / f"{51:020d}.note"),
    ):
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(export, copy)
        change(copy)
        with pytest.raises(IntegrityError):
            verify(copy, trusted)


def test_tampered_tar_export_is_detected(sample: tuple[Path, bytes], tmp_path: Path) -> None:
    export, trusted = sample
    tar_path = tmp_path / "bad.tar"
    data = (export / "entries.jsonl").read_bytes().replace(b'"deny"', b'"allow"', 1)
    with tarfile.open(tar_path, "w") as tar:
        for name in (
            "FORMAT",
            "entries.jsonl",
            *sorted(f"heads/{p.name}" for p in (export / "heads").iterdir()),
        ):
            path = export / name
            if name == "entries.jsonl":
                path = tmp_path / "entries.jsonl"
                path.write_bytes(data)
            tar.add(path, arcname=name)
    with pytest.raises(IntegrityError, match="do not match"):
        verify(tar_path, trusted)
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(IntegrityError, match="not an audit export"):
        verify(tmp_path / "junk.tar")


def test_tar_made_by_the_tar_tool_verifies(sample: tuple[Path, bytes], tmp_path: Path) -> None:
    export, trusted = sample
    with tarfile.open(tmp_path / "retarred.tar", "w") as tar:
        tar.add(export, arcname=".")  # names like ./FORMAT, plus directory members
    assert verify_export(tmp_path / "retarred.tar", LOG_VKEY, trusted_head=trusted).entries == 50


def test_export_needs_a_head_and_a_fresh_destination(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log:
        log.append(make_entry(0))
        with pytest.raises(NotFound, match="no signed head"):
            export_to_directory(log, tmp_path / "out")
        publish_head(log, None)
        log.append(make_entry(1))  # not covered by a head: not exported
        summary = export_to_directory(log, tmp_path / "out")
        assert (summary.entries, summary.heads) == (1, 1)
        with pytest.raises(InvalidInput, match="exists"):
            export_to_directory(log, tmp_path / "out")
    verify(tmp_path / "out")


def test_keys_may_be_given_as_verifier_objects(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    report = verify_export(
        export,
        NoteVerifier.from_vkey(LOG_VKEY),
        cosigner_key=NoteVerifier.from_vkey(WITNESS_VKEY),
        trusted_head=trusted,
    )
    assert report.entries == N_ENTRIES


def test_report_names_the_root_of_the_newest_head(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    report = verify_export(export, LOG_VKEY, trusted_head=trusted)
    newest = Checkpoint.parse(SignedNote.parse(trusted).text)
    assert newest.size == N_ENTRIES
    assert report.root_hash == newest.root_hash == report.heads[-1].checkpoint.root_hash


def head_for_origin(data: bytes, origin: str) -> bytes:
    """The same tree as the head ``data``, signed by the cell and cosigned, under ``origin``."""
    checkpoint = Checkpoint.parse(SignedNote.parse(data).text)
    other = Checkpoint(origin, checkpoint.size, checkpoint.root_hash)
    note = sign_checkpoint(other, LOG_SIGNER)
    return note.with_signature(WITNESS.sign_at(note.text, 1_760_000_200)).to_bytes()


def test_expected_origin_is_checked_without_a_trusted_head(sample: tuple[Path, bytes]) -> None:
    export, _ = sample
    with pytest.raises(IntegrityError, match="for log"):
        verify_export(export, LOG_VKEY, cosigner_key=WITNESS_VKEY, origin="other.example/log")


def test_heads_of_one_export_must_share_one_origin(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    # the cell's key signs heads for one log only by convention: a head it signed for
    # another origin, even over the same tree, does not belong in this log's export
    export, _ = sample
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    name = copy / "heads" / f"{23:020d}.note"
    name.write_bytes(head_for_origin(name.read_bytes(), "other.example/log"))
    with pytest.raises(IntegrityError, match=r"is for log 'other\.example/log'"):
        verify_export(copy, LOG_VKEY, cosigner_key=WITNESS_VKEY)


def test_a_whole_export_of_another_origin_under_this_key_is_refused(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    # every head for one other origin, signed by this cell's key and cosigned: it
    # verified as "N entries of other.example/log" against the key of this cell's log,
    # so the operator could keep a second history under a second name (another cell
    # given a copy of the key) and hand it to whoever checks this cell
    export, _ = sample
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    for name in (copy / "heads").iterdir():
        name.write_bytes(head_for_origin(name.read_bytes(), "other.example/log"))
    with pytest.raises(IntegrityError, match=r"is for log 'other\.example/log', not 'audit\."):
        verify_export(copy, LOG_VKEY, cosigner_key=WITNESS_VKEY)


def test_trusted_head_needs_the_partners_cosignature(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    uncosigned = sign_checkpoint(Checkpoint.parse(SignedNote.parse(trusted).text), LOG_SIGNER)
    with pytest.raises(IntegrityError, match="trusted head: note is not signed by"):
        verify(export, uncosigned.to_bytes())


def test_trusted_head_for_another_log_is_refused(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    with pytest.raises(IntegrityError, match="trusted head is for another log"):
        verify_export(
            export,
            LOG_VKEY,
            cosigner_key=WITNESS_VKEY,
            trusted_head=head_for_origin(trusted, "other.example/log"),
        )


def test_export_with_one_head_verifies_against_its_trusted_head(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log:
        for i in range(3):
            log.append(make_entry(i))
        publish_head(log, None)
        export_to_directory(log, tmp_path / "out")
        trusted = log.heads()[-1].to_bytes()
    report = verify_export(
        tmp_path / "out", LOG_VKEY, cosigner_key=WITNESS_VKEY, trusted_head=trusted
    )
    assert (report.entries, len(report.heads)) == (3, 1)
    with pytest.raises(IntegrityError, match="trusted head is for another log"):
        verify_export(
            tmp_path / "out", LOG_VKEY, trusted_head=head_for_origin(trusted, "other.example/log")
        )


def test_tar_holding_a_file_twice_is_refused(sample: tuple[Path, bytes], tmp_path: Path) -> None:
    # which copy a verifier reads and which one `tar -x` keeps need not be the same
    export, trusted = sample
    with tarfile.open(tmp_path / "twice.tar", "w") as tar:
        tar.add(export, arcname=".")
        tar.add(export / "entries.jsonl", arcname="entries.jsonl")
    with pytest.raises(IntegrityError, match="same file twice"):
        verify(tmp_path / "twice.tar", trusted)


def test_compressed_tar_is_not_an_audit_export(sample: tuple[Path, bytes], tmp_path: Path) -> None:
    # an export is an uncompressed tar: the verifier does not run a decompressor on it
    export, trusted = sample
    with tarfile.open(tmp_path / "export.tar.gz", "w:gz") as tar:
        tar.add(export, arcname=".")
    with pytest.raises(IntegrityError, match="not an audit export"):
        verify(tmp_path / "export.tar.gz", trusted)


def test_a_head_named_in_another_scripts_digits_cannot_pose_as_the_newest(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    # \d matched Arabic-Indic digits, which int() reads and which sort after every ASCII
    # name: the head of size 10 became the "newest", and an export cut to 10 entries
    # verified though it carried the cosigned head of 50 (found by mutation testing)
    export = tmp_path / "export"
    shutil.copytree(sample[0], export)
    ten = f"{10:020d}"
    arabic = "".join(chr(0x0660 + int(digit)) for digit in ten)
    (export / "heads" / f"{ten}.note").rename(export / "heads" / f"{arabic}.note")
    lines = (export / "entries.jsonl").read_bytes().splitlines(keepends=True)
    (export / "entries.jsonl").write_bytes(b"".join(lines[:10]))
    with pytest.raises(IntegrityError, match="unexpected"):
        verify(export)


def test_a_cut_or_damaged_tar_is_an_integrity_error(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    # tarfile's "unexpected end of data" escaped as a traceback, and a file cut at a
    # member's end (or at a damaged header) was read as a shorter export
    whole = sample[0].with_suffix(".tar").read_bytes()
    with tarfile.open(sample[0].with_suffix(".tar")) as tar:
        last = tar.getmembers()[-1].offset  # its header
        end = tar.offset  # the end-of-archive block
    damaged = bytearray(whole)
    damaged[last + 100] ^= 0xFF  # its mode: the header's checksum fails
    cut = tmp_path / "cut.tar"
    for data in [*(whole[:n] for n in range(0, end + tarfile.BLOCKSIZE, 97)), bytes(damaged)]:
        cut.write_bytes(data)
        with pytest.raises(IntegrityError, match=r"not an audit export|not a whole audit export"):
            verify(cut)
    cut.write_bytes(whole[: end + tarfile.BLOCKSIZE])
    verify(cut)


def one_head_log(tmp_path: Path) -> AuditLog:
    log = AuditLog.open(tmp_path / "log")
    log.append(make_entry(0))
    publish_head(log, None)
    return log


@pytest.mark.parametrize("name", ["x", "x.tar"])
def test_a_failed_export_leaves_nothing_and_names_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # on a full disk the tar form left its spooled entries (.x.tar.partial.entries)
    # behind, and both named their temporary, not the destination given
    def full_disk(log: AuditLog, out: object, count: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "_write_entries", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    write = export_to_file if name.endswith(".tar") else export_to_directory
    with one_head_log(tmp_path) as log, pytest.raises(StorageError) as caught:
        write(log, out / name)
    assert str(caught.value) == (
        f"cannot write {out / name}: No space left on device; make room and retry"
    )
    assert list(out.iterdir()) == []


def test_an_export_needs_its_directory_and_never_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the directory form made missing parents (mkdir -p); the tar form failed, as a
    # failure (exit 1) naming its temporary; and an unwritable directory was a failure too
    (tmp_path / "file").write_bytes(b"")
    with one_head_log(tmp_path) as log:
        for destination, reason in (
            (tmp_path / "missing" / "deep" / "x", "No such file or directory"),
            (tmp_path / "missing" / "x.tar", "No such file or directory"),
            (tmp_path / "file" / "x.tar", "Not a directory"),
        ):
            write = export_to_file if destination.suffix == ".tar" else export_to_directory
            with pytest.raises(InvalidInput) as caught:
                write(log, destination)
            assert str(caught.value) == f"cannot write {destination}: {reason}"
        assert not (tmp_path / "missing").exists()
        unwritable = tmp_path / "unwritable"
        unwritable.mkdir()
        real_access = os.access
        monkeypatch.setattr(  # root may write anywhere: a refused access stands in
            os, "access", lambda path, mode: Path(path) != unwritable and real_access(path, mode)
        )
        for name in ("x", "x.tar"):
            write = export_to_file if name.endswith(".tar") else export_to_directory
            with pytest.raises(InvalidInput, match="Permission denied"):
                write(log, unwritable / name)
        assert list(unwritable.iterdir()) == []


def test_an_entry_nested_deeper_than_the_parser_recurses_is_refused_not_a_crash(
    sample: tuple[Path, bytes],
) -> None:
    export, trusted = sample
    lines = lines_of(export)
    bomb = b"[" * 30000 + b"]" * 30000 + b"\n"
    assert detected(export, trusted, "entries.jsonl", b"".join([bomb, *lines[1:]]))


def test_a_key_of_the_wrong_kind_is_bad_input_not_a_cosignature(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    export, _ = sample
    uncosigned = tmp_path / "uncosigned"
    shutil.copytree(export, uncosigned)
    for path in (uncosigned / "heads").iterdir():
        note = SignedNote.parse(path.read_bytes())
        path.write_bytes(SignedNote(note.text, note.signatures[:1]).to_bytes())
    with pytest.raises(InvalidInput, match="cosignature key"):
        verify_export(uncosigned, LOG_VKEY, cosigner_key=LOG_VKEY)
    with pytest.raises(InvalidInput, match="Ed25519 signing key"):
        verify_export(export, WITNESS_VKEY)


def test_an_export_takes_in_a_head_another_process_stored_after_this_one_looked(
    tmp_path: Path,
) -> None:
    # `audit export` publishes a head, then exports every stored head: one another
    # process (a forget's receipt) stored meanwhile was past this handle's entries
    # ("entry range 0..6 is outside 0..3", exit 2)
    mine = AuditLog.open(tmp_path / "log")
    for i in range(3):
        mine.append(make_entry(i))
    publish_head(mine, None)
    other = AuditLog.open(tmp_path / "log")  # its own descriptors and flock, as a process's
    for i in range(3, 6):
        other.append(make_entry(i))
    publish_head(other, 3)
    other.close()
    for write in (export_to_directory, export_to_file):
        summary = write(mine, tmp_path / f"export-{write.__name__}")
        assert (summary.entries, summary.heads) == (6, 2)
        verify(summary.path, mine.heads()[-1].to_bytes())
    mine.close()


SHARDVAULT = Path(sys.executable).parent / "shardvault"
SMALL_PROCESS = 512 << 20  # address space: a verifier needs about 200 MiB


def verify_in_a_small_process(export: Path) -> subprocess.CompletedProcess[str]:
    """`shardvault audit verify` as an outsider runs it, held to SMALL_PROCESS bytes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (SMALL_PROCESS, SMALL_PROCESS))

    args = [str(SHARDVAULT), "audit", "verify", str(export), "--key", LOG_VKEY]
    return subprocess.run(
        [*args, "--cosigner", WITNESS_VKEY], capture_output=True, text=True, timeout=120,
        preexec_fn=limit, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("entries.jsonl", "entries.jsonl line 1 is longer than an audit entry may be"),
        (f"heads/{1:020d}.note", f"heads/{1:020d}.note is larger than a signed head may be"),
        ("FORMAT", "export FORMAT is missing or of a version"),
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar"])
def test_a_member_of_gigabytes_is_refused_in_bounded_memory(
    sample: tuple[Path, bytes], tmp_path: Path, name: str, said: str, packed: bool
) -> None:
    # each member was read whole (a line, a head, FORMAT): a 10 KiB tar holding a sparse
    # member of 3 GiB of zeros raised MemoryError (a traceback), or grew the process by
    # gigabytes where memory allowed
    export = tmp_path / "export"
    shutil.copytree(sample[0], export)
    with open(export / name, "r+b") as file:
        if name == "entries.jsonl":
            file.truncate(0)  # its first line: zeros, no newline
        file.truncate(4 << 30)  # sparse: no disk used
    if packed:
        tar = shutil.which("tar")
        if tar is None:
            pytest.skip("no tar tool to write a sparse member")
        subprocess.run(
            [tar, "--sparse", "-cf", str(tmp_path / "export.tar"), "-C", str(export), "."],
            check=True,
        )
        assert (tmp_path / "export.tar").stat().st_size < 1 << 20
        export = tmp_path / "export.tar"
    done = verify_in_a_small_process(export)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: {said}"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_trusted_head_larger_than_any_head_is_refused_unread(sample: tuple[Path, bytes]) -> None:
    export, trusted = sample
    with pytest.raises(IntegrityError, match="trusted head is larger than a signed head may be"):
        verify(export, trusted + b"\n" * (1 << 20))


@pytest.mark.parametrize(
    "command",
    [["audit", "verify", "EXPORT", "--key"], ["audit", "verify", "EXPORT", "--key", LOG_VKEY,
     "--cosigner"], ["receipt", "verify", "HEAD", "--key"]],
    ids=["audit-key", "audit-cosigner", "receipt-key"],
)  # fmt: skip
def test_a_key_named_in_bytes_that_are_not_utf8_is_exit_2(
    sample: tuple[Path, bytes], tmp_path: Path, command: list[str]
) -> None:
    # the name's key ID could not be computed: UnicodeEncodeError, a traceback
    export, trusted = sample
    (tmp_path / "head.note").write_bytes(trusted)
    given = {"EXPORT": str(export), "HEAD": str(tmp_path / "head.note")}
    args = [os.fsencode(given.get(arg, arg)) for arg in command]
    name, rest = LOG_VKEY.split("+", 1)
    key = name.encode() + b"\xff+" + rest.encode()
    done = subprocess.run([SHARDVAULT, *args, key], capture_output=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(b"error: key name") and len(done.stderr.splitlines()) == 1


def test_directories_nested_deep_in_an_export_are_one_line_not_a_traceback(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    # the export was walked recursively for its files: 1500 nested folders raised
    # RecursionError through the CLI
    export = tmp_path / "export"
    shutil.copytree(sample[0], export)
    nest(export, 1500)
    try:
        done = verify_in_a_small_process(export)
    finally:
        nest(export, -1500)  # shutil.rmtree recurses too
    assert done.returncode == 1, done.stderr
    assert done.stderr == "error: export contains unexpected files: ['d']\n"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (b"shardvault-audit-export\nversion 2\n", "export FORMAT is version 2; this shardvault "
         "reads version 1: upgrade shardvault to verify it"),
        (b"shardvault-audit-export\nversion 0\n", "export FORMAT is missing or of a version "
         "this reader does not know"),
        (b"other\n", "export FORMAT is missing or of a version this reader does not know"),
    ],
    ids=["newer", "unknown", "other"],
)  # fmt: skip
def test_an_export_of_a_newer_format_says_upgrade(
    sample: tuple[Path, bytes], tmp_path: Path, text: bytes, said: str
) -> None:
    # an export a newer shardvault wrote was "missing or of a version this reader does
    # not know", as if damaged: not what to do
    export = tmp_path / "export"
    shutil.copytree(sample[0], export)
    (export / "FORMAT").write_bytes(text)
    done = verify_in_a_small_process(export)
    assert (done.returncode, done.stderr) == (1, f"error: {said}\n")


def test_a_name_not_utf8_in_the_list_of_unexpected_files_is_written_as_its_byte(
    sample: tuple[Path, bytes], tmp_path: Path
) -> None:
    # the list was formatted by its repr, whose strings wrote the byte as the surrogate
    # Python reads it as, ['a\udcff'], where every other error line and output write \xff
    export = tmp_path / "export"
    shutil.copytree(sample[0], export)
    (export / os.fsdecode(b"a\xff\\x")).write_bytes(b"")
    done = verify_in_a_small_process(export)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "error: export contains unexpected files: ['a\\xff\\\\x']\n"


def raised_within(seconds: float, call: Callable[[], object], fifo: Path) -> BaseException:
    """What CALL raised, run on a thread; if it is still running after SECONDS it is
    waiting on FIFO, which is then opened for writing and closed to let it go on."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # its reader sees the end
        thread.join(seconds)
        pytest.fail(f"verify_export waited on the FIFO {fifo.name} for a writer")
    assert raised, "verify_export accepted an export with a FIFO in it"
    return raised[0]


@pytest.mark.parametrize("member", ["FORMAT", "entries.jsonl", "heads"])
def test_a_member_swapped_for_a_fifo_after_the_listing_is_refused_not_waited_on(
    sample: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    # a FIFO listed is never taken for a file, but the members were then opened with a
    # blocking open: one swapped in after the listing made verify wait for a writer
    export = tmp_path / "export"
    shutil.copytree(sample[0], export)
    target = (
        export / member if member != "heads" else next(iter(sorted((export / "heads").iterdir())))
    )
    listed = verify_module._listed

    def then_a_fifo(path: Path) -> tuple[set[str], set[str]]:
        found = listed(path)
        target.unlink()
        os.mkfifo(target)
        return found

    monkeypatch.setattr(verify_module, "_listed", then_a_fifo)
    caught = raised_within(10, lambda: verify(export), target)
    assert isinstance(caught, IntegrityError), caught
    assert f"{target.relative_to(export)} is a named FIFO, not a regular file" in str(caught)


def test_a_fifo_given_as_an_export_is_refused_not_waited_on(tmp_path: Path) -> None:
    # the command checks that EXPORT is a directory or a file first; verify_export
    # then opened it as a tar with a blocking open, so a FIFO (there from the start,
    # or swapped in after the command's check) made it wait for a writer
    fifo = tmp_path / "export.tar"
    os.mkfifo(fifo)
    caught = raised_within(10, lambda: verify(fifo), fifo)
    assert isinstance(caught, InvalidInput), caught
    assert str(caught) == f"{fifo} is a named FIFO, neither an export directory nor a tar file"


def nest(where: Path, depth: int) -> None:
    """Make DEPTH folders ``d/d/...`` in WHERE, or remove -DEPTH of them, in relative
    steps: the whole path is longer than a path may be."""
    here = os.getcwd()
    os.chdir(where)
    try:
        for _ in range(abs(depth)):
            if depth > 0:
                os.mkdir("d")
            os.chdir("d")
        for _ in range(-depth):
            os.chdir("..")
            os.rmdir("d")
    finally:
        os.chdir(here)


def test_an_export_that_is_a_pipe_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    # it was opened to check it could be read, which waits for a writer: for ever. A
    # pipe cannot be an export anyway (a tar is read with seeks)
    fifo = tmp_path / "export.tar"
    os.mkfifo(fifo)
    done = subprocess.run(
        [SHARDVAULT, "audit", "verify", str(fifo), "--key", LOG_VKEY],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {fifo} is neither an export directory nor a tar file\n"
