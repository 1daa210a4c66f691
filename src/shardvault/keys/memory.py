"""In-memory custodian: tests, and a record of every justification it was shown.

Its gate decides every wrap, unwrap and destroy before anything changes, as the
keyring's does; a refused call is still recorded (it was shown). It keeps the
subject each key was wrapped for, in memory, and with a gate destroys a key, or
unwraps it for a justification naming an approval, only for that subject, as the
keyring does; given a signer, it attests each destroy as
the keyring does, keeping the first attestation of each key.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable

from shardvault.keys.attestation import StatementSigner, sign_destroy
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
)
from shardvault.model import Justification


class MemoryCustodian:
    def __init__(
        self,
        gate: CustodianGate | None = None,
        signer: StatementSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._roots: dict[KeyScope, bytes] = {}
        self._destroyed: set[tuple[KeyScope, str]] = set()
        self._subjects: dict[tuple[KeyScope, str], str] = {}
        self._attestations: dict[tuple[KeyScope, str], bytes] = {}
        self._lock = threading.Lock()
        self.gate = gate
        self.signer = signer
        self.clock = clock
        self.justifications: list[tuple[str, KeyScope, str, Justification]] = []

    def _root(self, scope: KeyScope) -> bytes:
        with self._lock:
            return self._roots.setdefault(scope, os.urandom(32))

    def _gate(
        self, operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> str | None:
        if self.gate is None:
            return None
        return self.gate(operation, scope, key_id, why)

    def wrap(
        self, scope: KeyScope, key_id: str, key: bytes, why: Justification, *, subject: str
    ) -> bytes:
        self.justifications.append(("wrap", scope, key_id, why))
        approved = self._gate(KeyOperation.WRAP, scope, key_id, why)
        if self.gate is not None and why.approval_id is not None:
            require_approved_subject(scope, key_id, approved, subject)
        with self._lock:
            held = self._subjects.setdefault((scope, key_id), subject)
        if held != subject:
            raise refuse_key_subject(scope, key_id, KeyOperation.WRAP, TAKEN)
        return seal_key(self._root(scope), scope, key_id, key)

    def unwrap(self, scope: KeyScope, key_id: str, blob: bytes, why: Justification) -> bytes:
        self.justifications.append(("unwrap", scope, key_id, why))
        if (scope, key_id) in self._destroyed:
            raise refuse_destroyed(scope, key_id)
        subject = self._gate(KeyOperation.UNWRAP, scope, key_id, why)
        if self.gate is not None and why.approval_id is not None:
            self._require_subject(scope, key_id, subject, KeyOperation.UNWRAP)
        return open_key(self._root(scope), scope, key_id, blob)

    def destroy(
        self, scope: KeyScope, key_id: str, why: Justification, *, nonce: bytes | None = None
    ) -> bytes | None:
        self.justifications.append(("destroy", scope, key_id, why))
        subject = self._gate(KeyOperation.DESTROY, scope, key_id, why)
        if self.gate is not None:
            self._require_subject(scope, key_id, subject, KeyOperation.DESTROY)
        signed = None
        if nonce is not None and subject is not None and self.signer is not None:
            with self._lock:
                held = self._attestations.get((scope, key_id))
            if held is None:  # signed before the key is destroyed, as the keyring does
                signed = sign_destroy(self.signer, scope, key_id, subject, nonce, self.clock())
        with self._lock:
            self._destroyed.add((scope, key_id))
            if signed is not None:
                self._attestations.setdefault((scope, key_id), signed)
            return self._attestations.get((scope, key_id)) if nonce is not None else None

    def _require_subject(
        self, scope: KeyScope, key_id: str, subject: str | None, operation: KeyOperation
    ) -> None:
        """As the keyring: only for the subject the key was wrapped for."""
        with self._lock:
            recorded = self._subjects.get((scope, key_id))
        reason = (
            NO_SUBJECT if subject is None
            else NO_RECORD if recorded is None
            else OTHER_SUBJECT if recorded != subject
            else None
        )  # fmt: skip
        if reason is not None:
            raise refuse_key_subject(scope, key_id, operation, reason)

    def destroy_attestation(self, scope: KeyScope, key_id: str) -> bytes | None:
        with self._lock:
            return self._attestations.get((scope, key_id))

    def needs_subjects(self) -> bool:
        return False  # it holds no key from before it recorded subjects

    def record_subjects(self, keys: Iterable[tuple[KeyScope, str, str]]) -> None:
        """Takes none: every key it holds was recorded when it was wrapped."""

    def close(self) -> None:
        """Holds no file: nothing to close (its keys stay, for a vault opened on it again)."""
