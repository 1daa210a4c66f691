"""In-memory custodian: tests, and a record of every justification it was shown.

Its gate decides every wrap, unwrap and destroy before anything changes, as the
keyring's does; a refused call is still recorded (it was shown).
"""

from __future__ import annotations

import os
import threading

from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import CustodianGate, open_key, refuse_destroyed, seal_key
from shardvault.model import Justification


class MemoryCustodian:
    def __init__(self, gate: CustodianGate | None = None) -> None:
        self._roots: dict[KeyScope, bytes] = {}
        self._destroyed: set[tuple[KeyScope, str]] = set()
        self._lock = threading.Lock()
        self.gate = gate
        self.justifications: list[tuple[str, KeyScope, str, Justification]] = []

    def _root(self, scope: KeyScope) -> bytes:
        with self._lock:
            return self._roots.setdefault(scope, os.urandom(32))

    def _gate(
        self, operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> None:
        if self.gate is not None:
            self.gate(operation, scope, key_id, why)

    def wrap(self, scope: KeyScope, key_id: str, key: bytes, why: Justification) -> bytes:
        self.justifications.append(("wrap", scope, key_id, why))
        self._gate(KeyOperation.WRAP, scope, key_id, why)
        return seal_key(self._root(scope), scope, key_id, key)

    def unwrap(self, scope: KeyScope, key_id: str, blob: bytes, why: Justification) -> bytes:
        self.justifications.append(("unwrap", scope, key_id, why))
        if (scope, key_id) in self._destroyed:
            raise refuse_destroyed(scope, key_id)
        self._gate(KeyOperation.UNWRAP, scope, key_id, why)
        return open_key(self._root(scope), scope, key_id, blob)

    def destroy(self, scope: KeyScope, key_id: str, why: Justification) -> None:
        self.justifications.append(("destroy", scope, key_id, why))
        self._gate(KeyOperation.DESTROY, scope, key_id, why)
        with self._lock:
            self._destroyed.add((scope, key_id))
