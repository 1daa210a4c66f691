"""Local keyring: the embedded default custodian.

A JSON file, mode 0600, holding a random 256-bit root key per (tenant,
jurisdiction), and beside it a SQLite file of the tombstones of destroyed
subject keys (`keys.tombstones`) and one of the subject each key was wrapped
for (`keys.key_subjects`). In production this role is played by the partner's
HSM; the files stand in for it on one machine.

Several processes may hold the same keyring (a server and a CLI run). A root
is added by a read-merge-write of the JSON under an exclusive lock on
``<file>.lock``, rewritten atomically (temp file, fsync, rename): a root once
written is never replaced (only a wrap makes one, and a file showing another root
for a scope than the one held is refused, not written over). A destroy only
inserts a row (durable before it returns), so a forget costs the same however
many users were forgotten before, and opening reads only the roots. Every
unwrap looks its key id up in the database (or in what this process found there
while it is unchanged: `keys.live_answers`), so a destroy committed by any
process refuses the very next unwrap anywhere; a database that cannot be read
refuses it too. The gate (the partner's policy) decides every wrap, unwrap and
destroy before a file is touched; a wrap records whose key it is, and a destroy,
or an unwrap that names an approval, is done only for the subject the gate's
approval names, if the key is that subject's (an unwrap naming none, every plain
get, reads no record of subjects). Given a nonce, a destroy returns the
custodian's signed attestation of it (`keys.attestation`): signed before the
tombstone is written (a key that cannot sign destroys nothing), recorded beside
the key's subject after it, and the first one recorded is what every later
destroy of the key, and `destroy_attestation`, return. A keyring from before that
record gets the file on first use, and its earlier keys' subjects once from the
vault (`record_subjects`).

Format version 2 (docs/formats.md, "Keyring")::

    {"format": "shardvault-keyring", "version": 2, "roots": {"intl/US": "<base64>"}}

A version-1 file also held ``"destroyed": {"intl/US": ["<key id>"]}``. Opened,
it is migrated under the lock: its tombstones are committed to the database
first, then the file is rewritten as version 2, so a crash between the two
loses none (the next open inserts them again, harmlessly, and rewrites it).
"""

from __future__ import annotations

import base64
import hmac
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardvault import durability
from shardvault.errors import IntegrityError, KeyUnavailable, NewerFormat
from shardvault.file_locks import flocked
from shardvault.keys.attestation import StatementSigner, sign_destroy
from shardvault.keys.key_subjects import KeySubjects, key_subjects_path
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import (
    NO_RECORD,
    NO_SUBJECT,
    OTHER_SUBJECT,
    TAKEN,
    CustodianGate,
    open_key,
    refuse_destroyed,
    refuse_key_subject,
    require_approved_subject,
    seal_key,
    subject_key,
    subject_tag,
)
from shardvault.keys.tombstones import (
    Tombstones,
    TombstonesMissing,
    require_private,
    tombstones_path,
)
from shardvault.model import Justification

FORMAT = "shardvault-keyring"
VERSION = 2
READS = (1, 2)  # version 1 is migrated on open

V1Tombstones = dict[str, list[str]]
_EARLIER_BATCH = 10_000  # earlier keys' subjects recorded per transaction


def lock_path(keyring: Path) -> Path:
    """``keys/keyring.json`` is locked for a change through ``keys/keyring.json.lock``."""
    return keyring.with_name(keyring.name + ".lock")


# SQLite's rollback journal beside each database, the longest name it makes there
_JOURNAL = "-journal"


def keyring_files(keyring: Path) -> tuple[Path, ...]:
    """Every file the keyring at KEYRING makes beside itself, each as long as its name
    gets (a temporary's tag at its full width): the config refuses a keyring path for
    which one is too long to open, which failed only when that file was first made."""
    temporary = durability.temporary_beside(keyring, durability.WIDEST_TEMPORARY_TAG)
    databases = (tombstones_path(keyring), key_subjects_path(keyring))
    return (
        lock_path(keyring),
        temporary,
        *(db.with_name(db.name + _JOURNAL) for db in databases),
    )


def _damaged(path: Path, why: str) -> IntegrityError:
    return IntegrityError(
        f"keyring {path} is damaged: {why}; restore it from a backup, leaving the "
        "tombstones beside it as they are (an older copy would undo forgets)"
    )


def _check_v1_tombstones(destroyed: object) -> None:
    """A version-1 file's tombstones, checked before any is migrated: the file is then
    rewritten without them, so one misread (a string taken for its letters) would
    make a destroyed key live again."""
    if not isinstance(destroyed, dict):
        raise TypeError("'destroyed' is not a map")
    for label, ids in destroyed.items():
        if not isinstance(ids, list) or not all(isinstance(kid, str) for kid in ids):
            raise TypeError(f"'destroyed' of {label} is not a list of key ids")


class KeyringCustodian:
    def __init__(
        self,
        path: Path,
        gate: CustodianGate | None = None,
        may_create: Callable[[], bool] | None = None,
        signer: StatementSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``may_create`` says whether a missing keyring may be made now (the vault: only
        while no subject is registered); without it, unless this process read roots.
        ``signer`` is the custodian's key for destroy attestations (none: none given)."""
        self.path = path
        self.gate = gate
        self._may_create = may_create
        self._signer = signer
        self._clock = clock
        self._lock = threading.Lock()
        self._roots: dict[str, bytes] = {}
        self._tombstones = Tombstones(tombstones_path(path))
        self._subjects = KeySubjects(key_subjects_path(path))
        self._subjects_kept = False  # seen the tombstones at version 2
        if path.exists() and self._load() is not None:
            self._settle()  # a version-1 keyring: migrated before any use

    def _load(self) -> V1Tombstones | None:
        """Merge the file's roots in (those held are kept); a version-1 file's tombstones."""
        require_private(self.path.stat(), self.path, "keyring")
        try:
            doc: Any = json.loads(durability.read_own(self.path, "keyring"))
        except OSError as exc:
            raise KeyUnavailable(f"keyring {self.path} cannot be read: {exc.strerror}") from exc
        except ValueError as exc:
            raise _damaged(self.path, f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise _damaged(self.path, "not a shardvault keyring")
        version = doc.get("version")
        if type(version) is not int or version not in READS:  # not true, nor 2.0
            reads = f"this shardvault reads versions {' and '.join(map(str, READS))}"
            if isinstance(version, int) and version > max(READS):
                raise NewerFormat(
                    f"keyring {self.path} has format version {version}; {reads}: upgrade shardvault"
                )
            raise _damaged(self.path, f"format version {version!r}; {reads}")
        try:
            roots = {
                label: base64.b64decode(b64, validate=True) for label, b64 in doc["roots"].items()
            }
            destroyed: V1Tombstones | None = doc["destroyed"] if doc["version"] == 1 else None
            if destroyed is not None:
                _check_v1_tombstones(destroyed)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise _damaged(self.path, f"{type(exc).__name__} {exc}") from None
        if any(len(root) != 32 for root in roots.values()):
            raise _damaged(self.path, "a root key is not 32 bytes")
        self._refuse_other_roots(roots)
        for label, root in roots.items():
            self._roots.setdefault(label, root)
        return destroyed

    def _refuse_other_roots(self, roots: dict[str, bytes]) -> None:
        """A root is never replaced: a file holding another root for a scope than the one
        this process holds was put in place of the one it read (a backup restored). The
        next save would write the held root over the file's, losing every key wrapped
        under that one, so nothing is written until the process is restarted."""
        for label, root in roots.items():
            held = self._roots.get(label)
            if held is not None and not hmac.compare_digest(held, root):
                raise IntegrityError(
                    f"keyring {self.path} holds another root key for {label} than the one "
                    "this process read or made: it was replaced while in use; nothing was "
                    "written: restart every process that uses it"
                )

    @contextmanager
    def _flocked(self) -> Iterator[None]:
        """Hold the cross-process lock for a change."""
        with flocked(lock_path(self.path), make_parent=True):
            self._drop_stale_temporaries()
            yield

    def _drop_stale_temporaries(self) -> None:
        """Holding the flock: a temporary copy of the keyring beside it (root keys and
        all) is one a writer killed before its rename left, since writers hold the
        flock while theirs exists; it goes."""
        for temp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            temp.unlink(missing_ok=True)

    def _catch_up(self) -> None:
        """Holding the flock: read the latest file, and give a keyring its database.

        A keyring without a file yet gets the database first (a version-2 file
        always has one beside it). A version-1 file's tombstones are committed
        to the database before the file is rewritten as version 2 without them.
        A version-2 keyring whose database is missing does not get a new, empty
        one: that would bring back every key it had destroyed; nor does a keyring
        whose file went while this process held its roots.
        """
        if not self.path.exists():
            if self._roots or (self._may_create is not None and not self._may_create()):
                raise KeyUnavailable(  # it was there: lost or moved, never a new keyring
                    f"keyring {self.path} is missing, though keys were made with it: "
                    "restore it with its tombstones, then retry"
                )
            self._tombstones.create()
            self._subjects.create(earlier_recorded=True)  # a new keyring: no earlier key
            self._tombstones.mark_subjects_kept()
            return
        earlier = self._load()
        if earlier is not None:
            self._tombstones.create()
            # in key order: a million random inserts took 6 s, thrashing SQLite's page cache
            self._tombstones.add(
                sorted((label, kid) for label, ids in earlier.items() for kid in ids)
            )
            self._save()

    def _keep_subjects(self) -> None:
        """Before the key subjects are used (a wrap, a destroy, the vault's open): a
        keyring from before the custodian recorded them gets their file, saying its
        earlier keys are yet to be named (`record_subjects`); then its tombstones are
        stamped version 2, so that file is never made anew. Tombstones that are
        missing or unreadable are left to refuse the key use, as before."""
        if self._subjects_kept or not self.path.exists():
            return  # a keyring made now gets both files at once (`_catch_up`)
        try:
            if self._tombstones.version() < 2:
                with self._lock, self._flocked():
                    if self._tombstones.version() < 2:
                        self._subjects.create(earlier_recorded=False)
                        self._tombstones.mark_subjects_kept()
        except TombstonesMissing:
            return
        self._subjects_kept = True

    def _settle(self) -> None:
        """Catch up under both locks: migrates a version-1 keyring, makes a new one's database."""
        with self._lock, self._flocked():
            self._catch_up()

    def _save(self) -> None:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "roots": {k: base64.b64encode(v).decode() for k, v in sorted(self._roots.items())},
        }
        # a new root must survive a crash (keys wrapped under it are committed): the
        # rename is made durable with its directory
        durability.replace_whole(self.path, json.dumps(doc, indent=1).encode(), 0o600)

    def _root(self, scope: KeyScope, make: bool) -> bytes:
        """The scope's root: held, or read from the file (another process may have made
        it; roots are only ever added), or, if `make` (a wrap), made now."""
        with self._lock:
            root = self._roots.get(scope.label())
            if root is not None:
                return root
            with self._flocked():
                self._catch_up()
                root = self._roots.get(scope.label())
                if root is None:
                    root = self._new_root(scope, make)
            return root

    def _new_root(self, scope: KeyScope, make: bool) -> bytes:
        """Holding both locks: a new root, saved. Only a wrap makes one: a key to unwrap
        was wrapped under a root, so a keyring without it is an older copy, and a root
        made then would wrap nothing and, held, could be saved over the real one."""
        if not make:
            raise KeyUnavailable(
                f"keyring {self.path} has no root key for {scope.label()}, though a key "
                "was wrapped under one: it is an older copy; restore the latest backup"
            )
        root = os.urandom(32)
        self._roots[scope.label()] = root
        self._save()
        return root

    def _gate(
        self, operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        """The gate, before the files are touched: a refusal creates no root and no tombstone.
        For a destroy, or a wrap or unwrap naming an approval, the subject it names."""
        if self.gate is None:
            return None
        return self.gate(operation, scope, key_id, why)

    def wrap(
        self, scope: KeyScope, key_id: str, key: bytes, why: Justification, *, subject: str
    ) -> bytes:
        approved = self._gate(KeyOperation.WRAP, scope, key_id, why)
        if self.gate is not None and why.approval_id is not None:
            require_approved_subject(scope, key_id, approved, subject)
        root = self._root(scope, make=True)
        self._keep_subjects()
        tag = subject_tag(subject_key(root), scope, key_id, subject)
        if not hmac.compare_digest(self._subjects.bind(scope.label(), key_id, tag), tag):
            raise refuse_key_subject(scope, key_id, KeyOperation.WRAP, TAKEN)
        return seal_key(root, scope, key_id, key)

    def unwrap(self, scope: KeyScope, key_id: str, blob: bytes, why: Justification) -> bytes:
        if self._tombstones.holds(scope.label(), key_id):
            raise refuse_destroyed(scope, key_id)
        subject = self._gate(KeyOperation.UNWRAP, scope, key_id, why)
        if self.gate is not None and why.approval_id is not None:  # a plain get reads no more
            self._require_subject(scope, key_id, subject, KeyOperation.UNWRAP)
        return open_key(self._root(scope, make=False), scope, key_id, blob)

    def destroy(
        self, scope: KeyScope, key_id: str, why: Justification, *, nonce: bytes | None = None
    ) -> bytes | None:
        subject = self._gate(KeyOperation.DESTROY, scope, key_id, why)
        if self.gate is not None:
            self._require_subject(scope, key_id, subject, KeyOperation.DESTROY)
        held = signed = None
        if nonce is not None and subject is not None and self._signer is not None:
            held = self._subjects.attestation(scope.label(), key_id)
            if held is None:  # signed before the tombstone: a key that cannot sign destroys none
                signed = sign_destroy(self._signer, scope, key_id, subject, nonce, self._clock())
        try:
            self._tombstones.add([(scope.label(), key_id)])
        except TombstonesMissing:
            self._settle()  # a new keyring gets its database; a lost one is not made anew
            self._tombstones.add([(scope.label(), key_id)])
        if signed is None:
            return held
        try:
            return self._subjects.keep_attestation(scope.label(), key_id, signed)
        except KeyUnavailable as exc:
            raise KeyUnavailable(
                f"key {key_id} of {scope.label()} was destroyed, but its attestation was not "
                f"recorded ({exc}): run the forget again for it"
            ) from exc

    def destroy_attestation(self, scope: KeyScope, key_id: str) -> bytes | None:
        if not self._tombstones.holds(scope.label(), key_id):
            return None
        return self._subjects.attestation(scope.label(), key_id)

    def _require_subject(
        self, scope: KeyScope, key_id: str, subject: str | None, operation: KeyOperation
    ) -> None:
        """A destroy, or an unwrap that names an approval, goes ahead only for the subject
        the custodian wrapped the key for."""
        if subject is None:
            raise refuse_key_subject(scope, key_id, operation, NO_SUBJECT)
        self._keep_subjects()
        held = self._subjects.tag(scope.label(), key_id)
        if held is None:
            raise refuse_key_subject(scope, key_id, operation, NO_RECORD)
        tag = subject_tag(subject_key(self._root(scope, make=False)), scope, key_id, subject)
        if not hmac.compare_digest(held, tag):
            raise refuse_key_subject(scope, key_id, operation, OTHER_SUBJECT)

    def needs_subjects(self) -> bool:
        """Whether keys wrapped before this keyring recorded subjects are yet to be named.
        Not for a keyring whose files are missing or unreadable: nothing can be recorded
        then, and every destroy is refused."""
        if not self.path.exists():
            return False
        try:
            self._keep_subjects()
            return not self._subjects.earlier_recorded()
        except KeyUnavailable:
            return False

    def record_subjects(self, keys: Iterable[tuple[KeyScope, str, str]]) -> None:
        tag_keys: dict[KeyScope, bytes] = {}

        def tagged(scope: KeyScope, key_id: str, subject: str) -> tuple[str, str, bytes]:
            if scope not in tag_keys:
                tag_keys[scope] = subject_key(self._root(scope, make=False))
            return scope.label(), key_id, subject_tag(tag_keys[scope], scope, key_id, subject)

        rows = (tagged(*key) for key in keys)
        while batch := list(itertools.islice(rows, _EARLIER_BATCH)):
            self._subjects.record_earlier(batch)
        self._subjects.finish_earlier()

    def close(self) -> None:
        """Close the tombstones' connections and descriptor now, not when garbage
        collection finds the keyring; a later call opens them again."""
        self._tombstones.close()
