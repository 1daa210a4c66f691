"""Orchestration: the one place that wires codec, placement, keys, nodes and catalog."""

from shardvault.vault.core import Vault
from shardvault.vault.gc import GcReport
from shardvault.vault.reader import ObjectReader
from shardvault.vault.repair import RepairReport
from shardvault.vault.views import ForgetResult, ListPage, NodeUsage

__all__ = [
    "ForgetResult",
    "GcReport",
    "ListPage",
    "NodeUsage",
    "ObjectReader",
    "RepairReport",
    "Vault",
]
