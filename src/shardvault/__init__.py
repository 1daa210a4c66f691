"""shardvault: encrypted, erasure-coded, jurisdiction-pinned storage for user data.

The public API is small; everything else is reached through its module::

    from shardvault import Vault, ObjectRef, load_config

    with Vault.open(load_config(path)) as vault:
        vault.put(ObjectRef("intl", "alice", "notes/today.txt"), b"hello")

Names are resolved lazily, so ``shardvault.scan`` (or the CLI's ``scan``)
does not pay for loading the vault's crypto and erasure-coding libraries.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Vault": "shardvault.vault",
    "ObjectRef": "shardvault.model",
    "ObjectInfo": "shardvault.model",
    "RequestContext": "shardvault.model",
    "ShardvaultError": "shardvault.errors",
    "load_config": "shardvault.config",
}

__all__ = [
    "ObjectInfo",
    "ObjectRef",
    "RequestContext",
    "ShardvaultError",
    "Vault",
    "__version__",
    "load_config",
]

if TYPE_CHECKING:
    from shardvault.config import load as load_config
    from shardvault.errors import ShardvaultError
    from shardvault.model import ObjectInfo, ObjectRef, RequestContext
    from shardvault.vault import Vault


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardvault' has no attribute {name!r}")
    attribute = "load" if name == "load_config" else name
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value
