"""The `shardvault` command: a thin skin over the library."""
