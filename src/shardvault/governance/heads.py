"""Each cell's audit log, its keys, and signed heads countersigned by the partner.

Who holds what (see docs/trust-model.md):

- the cell (operator) holds, in ``state/cells/<J>/audit/``: the log (``log/``),
  the HMAC key that pseudonymises subjects and object keys (``hmac.key``) and
  the Ed25519 key that signs its heads (``cell.skey``, Go ``note`` format);
- the partner holds, in its own directory (``partner/`` by default): the
  witness key that cosigns heads (``witness.skey``), the last head it cosigned
  per cell (``cosigned/<J>.note``), its custodian policy, its custodian's
  key for destroy attestations (``custodian.skey``, `governance.attestations`)
  and the audit positions its custodian was shown (``seen/<J>.seen``).

The partner cosigns a new head only after checking the cell's signature, a
consistency proof from the last head it cosigned, and that the head holds every
audit entry its custodian was shown durable (`governance.seen`), so the operator
cannot fork or rewrite the log, nor cut or rewrite an entry a key use followed,
without the partner noticing. Keys are created on first use, mode 0600.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.audit import (
    AuditEntry,
    AuditHasher,
    AuditLog,
    AuditTicket,
    Checkpoint,
    Cosigner,
    NoteSigner,
    SignedNote,
    cosign_checkpoint,
    open_checkpoint,
    sign_checkpoint,
    signer_from_skey,
)
from shardvault.audit.note import COSIGNATURE_V1, ED25519, NoteVerifier, key_id
from shardvault.durability import create_whole, read_own, replace_whole
from shardvault.errors import AuditUnavailable, ConfigError, IntegrityError, InvalidInput
from shardvault.file_locks import flocked
from shardvault.governance.seen import SeenBefore, SeenRecorder, check_head
from shardvault.partner_files import COSIGNED, SEEN, WITNESS_KEY


def _write_secret(path: Path, data: bytes) -> None:
    create_whole(path, data)  # never replaces a key another process created meanwhile


def _read_secret(path: Path, what: str) -> bytes:
    """The key's bytes; read first, so that what is no file is refused as such
    (`read_own`), not for its mode."""
    data = read_own(path, what)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
    return data


def format_skey(name: str, sig_type: int, seed: bytes) -> str:
    """Go ``note`` private key text: ``PRIVATE+KEY+<name>+<key id>+<base64(type||seed)>``."""
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    blob = base64.b64encode(bytes([sig_type]) + seed).decode("ascii")
    return f"PRIVATE+KEY+{name}+{key_id(name, sig_type, public).hex()}+{blob}"


def load_signer(path: Path, name: str, sig_type: int = ED25519) -> NoteSigner:
    """The signer stored at ``path``, created (random seed) on first use."""
    try:
        if not path.exists():
            _write_secret(path, format_skey(name, sig_type, os.urandom(32)).encode())
        signer = signer_from_skey(_read_secret(path, "signing key").decode("ascii").strip())
    except OSError as exc:
        raise AuditUnavailable(f"signing key {path}: {exc}") from exc
    except (UnicodeDecodeError, InvalidInput) as exc:
        raise IntegrityError(
            f"signing key {path} is damaged ({exc}): restore it from a backup"
        ) from None
    if signer.sig_type != sig_type:
        raise IntegrityError(f"signing key {path} is not of the expected type")
    return signer


_open_lock = threading.Lock()
_open_logs: dict[Path, tuple[AuditLog, int]] = {}


def _forget_logs_after_fork() -> None:
    """A forked child opens its own handles: the parent's locks may be held by threads it lacks."""
    global _open_lock
    for log, _ in _open_logs.values():
        log.abandon_after_fork()
    _open_logs.clear()
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_logs_after_fork)


def _acquire_log(directory: Path) -> AuditLog:
    """The process's one handle on a log: several vaults in one process share its
    group commit, so their appends share fsyncs (other processes append through their own)."""
    key = directory.resolve()
    with _open_lock:
        log, users = _open_logs.get(key) or (AuditLog.open(key), 0)
        _open_logs[key] = (log, users + 1)
        return log


def _release_log(directory: Path, log: AuditLog) -> None:
    """One user fewer; the last closes it. A log inherited over a fork is not ours."""
    key = directory.resolve()
    with _open_lock:
        entry = _open_logs.get(key)
        if entry is None or entry[0] is not log:
            return
        if entry[1] > 1:
            _open_logs[key] = (log, entry[1] - 1)
        else:
            del _open_logs[key]
            log.close()


class CellAudit:
    """One cell's audit log (opened on first use), pseudonym key and head-signing key."""

    def __init__(self, jurisdiction: str, directory: Path, origin: str) -> None:
        self.jurisdiction = jurisdiction
        self.directory = directory
        self.origin = origin
        self._lock = threading.Lock()
        self._log: AuditLog | None = None
        self._hasher: AuditHasher | None = None
        self._signer: NoteSigner | None = None

    @property
    def hasher(self) -> AuditHasher:
        if self._hasher is None:
            path = self.directory / "hmac.key"
            try:
                if not path.exists():
                    _write_secret(path, os.urandom(32))
                key = _read_secret(path, "audit key")
            except OSError as exc:
                raise AuditUnavailable(f"audit key {path}: {exc}") from exc
            if len(key) < 32:
                raise IntegrityError(
                    f"audit key {path} is damaged ({len(key)} bytes, not 32 or more): restore "
                    "it from a backup; a new one would give every subject new pseudonyms"
                )
            self._hasher = AuditHasher(key)
        return self._hasher

    @property
    def signer(self) -> NoteSigner:
        if self._signer is None:
            self._signer = load_signer(self.directory / "cell.skey", self.origin)
        return self._signer

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.signer.verifier_key())

    @property
    def log(self) -> AuditLog:
        with self._lock:
            if self._log is None:
                self._log = _acquire_log(self.directory / "log")
            return self._log

    def submit(self, entry: AuditEntry) -> AuditTicket:
        """Queue one entry; wait on the ticket (fail closed: `AuditUnavailable`) before
        acting on it."""
        return self.log.submit([entry])

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                log, self._log = self._log, None
                _release_log(self.directory / "log", log)


class PartnerWitness:
    """The partner's cosigner: checks consistency with what it saw, and that the head holds
    every audit position its custodian was shown (`governance.seen`), then countersigns."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._cosigner: Cosigner | None = None
        # the custodian's record of the positions it is shown, which the witness checks
        self.seen = SeenRecorder(directory / SEEN)

    @property
    def cosigner(self) -> Cosigner:
        if self._cosigner is None:
            signer = load_signer(self.directory / WITNESS_KEY, self.name, COSIGNATURE_V1)
            assert isinstance(signer, Cosigner)
            self._cosigner = signer
        return self._cosigner

    def vkey(self) -> str:
        return self.cosigner.verifier_key()

    def _last_path(self, jurisdiction: str) -> Path:
        return self.directory / COSIGNED / f"{jurisdiction}.note"

    @contextlib.contextmanager
    def turn(self, jurisdiction: str) -> Iterator[SeenBefore]:
        """One publisher of the cell's heads at a time, across processes: each takes the
        log's head under it, so the heads the partner cosigns only ever grow.

        Yields the audit positions the partner holds before the head is taken (this
        process's written out first): the head must hold them all (`cosign`)."""
        with flocked(self._last_path(jurisdiction).with_suffix(".lock"), make_parent=True):
            self.seen.write_out()
            yield self.seen.file.read(jurisdiction)

    def last(self, cell: CellAudit) -> Checkpoint | None:
        path = self._last_path(cell.jurisdiction)
        if not path.exists():
            return None
        try:
            data = read_own(path, "partner's last cosigned head")
            return open_checkpoint(data, cell.verifier).checkpoint
        except InvalidInput as exc:
            raise IntegrityError(f"partner's last cosigned head {path} is damaged: {exc}") from None

    def cosign(
        self, cell: CellAudit, note: SignedNote, timestamp: int, seen: SeenBefore
    ) -> SignedNote:
        """Countersign ``note`` if it extends the last head this partner cosigned for the
        cell and holds every position in ``seen`` (`turn`), which it then forgets."""
        previous = self.last(cell)
        head = Checkpoint.parse(note.text)
        size = head.size
        if previous is not None and previous.size > size:
            # no proof can be asked of a log this short: say what it means, not that
            # the proof's old size is out of range (InvalidInput, a usage error)
            raise IntegrityError(
                f"the partner cosigned a head of {previous.size} entries of {cell.origin}, "
                f"but its log has {size}: entries are missing (an older copy restored?)"
            )
        proof = cell.log.consistency_proof(previous.size, size) if previous else []
        cosigned = cosign_checkpoint(
            note.to_bytes(),
            cell.verifier,
            self.cosigner,
            timestamp=timestamp,
            previous=previous,
            proof=proof,
        )
        check_head(cell.log, previous, head, seen)
        # durable before it is answered: a partner that forgot its last head after a
        # crash could be walked back and cosign a rewritten history
        replace_whole(self._last_path(cell.jurisdiction), cosigned.to_bytes(), 0o644)
        with contextlib.suppress(OSError):  # if kept, checked again by the next head
            self.seen.file.drop_checked(seen)
        return cosigned

    def close(self) -> None:
        """Write out the audit positions the custodian still holds in memory."""
        self.seen.close()


def publish_head(cell: CellAudit, partner: PartnerWitness, timestamp: int) -> SignedNote:
    """Sign the cell's current head, have the partner cosign it, and store it with the log.

    Processes take turns (`PartnerWitness.turn`): two publishing at once could each
    sign a head, and the smaller one, cosigned second, would be refused as older
    than the partner's last (the stress run saw a forget fail that way).
    """
    with partner.turn(cell.jurisdiction) as seen:
        note = sign_checkpoint(cell.log.checkpoint(cell.origin), cell.signer)
        cosigned = partner.cosign(cell, note, timestamp, seen)
        cell.log.store_head(cosigned)
    return cosigned


__all__ = ["CellAudit", "PartnerWitness", "format_skey", "load_signer", "publish_head"]
