"""Shard stores: where a node keeps its shard files (port + adapters)."""

from shardvault.nodes.port import ShardReader, ShardStore, ShardWriter, check_shard_name

__all__ = ["ShardReader", "ShardStore", "ShardWriter", "check_shard_name"]
