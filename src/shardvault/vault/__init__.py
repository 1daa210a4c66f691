"""Orchestration: the one place that wires codec, placement, keys, nodes and catalog."""

from shardvault.vault.core import Vault
from shardvault.vault.gc import GcReport, NodeFailure
from shardvault.vault.object_stream import ObjectStream
from shardvault.vault.reader import ObjectReader
from shardvault.vault.repair import RepairReport
from shardvault.vault.views import CellCrowding, ForgetResult, ListPage, NodeUsage

__all__ = [
    "CellCrowding",
    "ForgetResult",
    "GcReport",
    "ListPage",
    "NodeFailure",
    "NodeUsage",
    "ObjectReader",
    "ObjectStream",
    "RepairReport",
    "Vault",
]
