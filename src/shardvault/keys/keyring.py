"""Local keyring file: the embedded default custodian.

One JSON file, mode 0600, holding a random 256-bit root key per (tenant,
jurisdiction) and the tombstones of destroyed subject keys. Rewritten
atomically (temp file, fsync, rename). In production this role is played by
the partner's HSM; the file stands in for it on one machine.

Several processes may hold the same keyring (a server and a CLI run), so every
change is a read-merge-write under an exclusive lock on ``<file>.lock``: a root
once written is never replaced, tombstones only accumulate, and an unwrap sees
tombstones written by others since it last looked. The gate (the partner's
policy) decides every wrap, unwrap and destroy before the file is touched.

Format (docs/formats.md, "keyring")::

    {"format": "shardvault-keyring", "version": 1,
     "roots": {"intl/US": "<base64>"}, "destroyed": {"intl/US": ["<key id>"]}}
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardvault import durability
from shardvault.errors import ConfigError, KeyUnavailable
from shardvault.keys.port import KeyOperation, KeyScope
from shardvault.keys.rootkey import CustodianGate, open_key, refuse_destroyed, seal_key
from shardvault.model import Justification

FORMAT = "shardvault-keyring"
VERSION = 1


class KeyringCustodian:
    def __init__(self, path: Path, gate: CustodianGate | None = None) -> None:
        self.path = path
        self.gate = gate
        self._lock = threading.Lock()
        self._roots: dict[str, bytes] = {}
        self._destroyed: dict[str, set[str]] = {}
        self._seen: tuple[int, int, int] | None = None
        if path.exists():
            self._load()

    def _load(self) -> None:
        """Merge the file in: roots already held are kept, tombstones only grow."""
        info = self.path.stat()
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"keyring {self.path} is not a file: check custodian.path")
        if mode & 0o077:
            raise KeyUnavailable(
                f"keyring {self.path} is readable by others (mode {mode:o}); run chmod 600 on it"
            )
        try:
            doc: Any = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"keyring {self.path} is unreadable or not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"{self.path} is not a shardvault keyring")
        if doc.get("version") != VERSION:
            raise ConfigError(
                f"keyring {self.path} has format version {doc.get('version')}; "
                f"this shardvault reads version {VERSION}"
            )
        for label, b64 in doc["roots"].items():
            self._roots.setdefault(label, base64.b64decode(b64))
        for label, ids in doc["destroyed"].items():
            self._destroyed.setdefault(label, set()).update(ids)
        self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)

    def _refresh(self) -> None:
        """Pick up what another process wrote since this one last read the file.

        The stat runs outside the lock: it releases the GIL, and threads queueing
        on a lock held across it would each cost a context switch.
        """
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return
        if (info.st_ino, info.st_mtime_ns, info.st_size) != self._seen:
            with self._lock:
                self._load()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the cross-process lock and the latest file contents for a change."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self._load()
            yield
        finally:
            os.close(lock)

    def _save(self) -> None:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "roots": {k: base64.b64encode(v).decode() for k, v in sorted(self._roots.items())},
            "destroyed": {k: sorted(v) for k, v in sorted(self._destroyed.items())},
        }
        # a new root must survive a crash (keys wrapped under it are committed), and so
        # must a tombstone: the rename is made durable with its directory
        durability.replace_whole(self.path, json.dumps(doc, indent=1).encode(), 0o600)
        info = self.path.stat()
        self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)

    def _root(self, scope: KeyScope) -> bytes:
        with self._lock:
            root = self._roots.get(scope.label())
            if root is not None:
                return root
            with self._exclusive():
                root = self._roots.get(scope.label())
                if root is None:
                    root = os.urandom(32)
                    self._roots[scope.label()] = root
                    self._save()
            return root

    def _gate(
        self, operation: KeyOperation, scope: KeyScope, key_id: str, why: Justification
    ) -> None:
        """The gate, before the file is touched: a refusal creates no root and no tombstone."""
        if self.gate is not None:
            self.gate(operation, scope, key_id, why)

    def wrap(self, scope: KeyScope, key_id: str, key: bytes, why: Justification) -> bytes:
        self._gate(KeyOperation.WRAP, scope, key_id, why)
        return seal_key(self._root(scope), scope, key_id, key)

    def unwrap(self, scope: KeyScope, key_id: str, blob: bytes, why: Justification) -> bytes:
        self._refresh()
        if key_id in self._destroyed.get(scope.label(), ()):
            raise refuse_destroyed(scope, key_id)
        self._gate(KeyOperation.UNWRAP, scope, key_id, why)
        return open_key(self._root(scope), scope, key_id, blob)

    def destroy(self, scope: KeyScope, key_id: str, why: Justification) -> None:
        self._gate(KeyOperation.DESTROY, scope, key_id, why)
        with self._lock, self._exclusive():
            self._destroyed.setdefault(scope.label(), set()).add(key_id)
            self._save()
