"""Key custody (port + adapters) and the subject/data key hierarchy."""

from shardvault.keys.port import KeyCustodian, KeyOperation, KeyScope

__all__ = ["KeyCustodian", "KeyOperation", "KeyScope"]
