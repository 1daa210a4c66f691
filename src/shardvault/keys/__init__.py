"""Key custody (port + adapters) and the subject/data key hierarchy."""

from shardvault.keys.port import KeyCustodian, KeyScope

__all__ = ["KeyCustodian", "KeyScope"]
