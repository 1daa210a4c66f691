"""Orchestration: the one place that wires codec, placement, keys, nodes and catalog."""

from shardvault.vault.core import ForgetResult, ListPage, NodeUsage, Vault
from shardvault.vault.gc import GcReport
from shardvault.vault.reader import ObjectReader

__all__ = ["ForgetResult", "GcReport", "ListPage", "NodeUsage", "ObjectReader", "Vault"]
