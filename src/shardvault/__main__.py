"""`python -m shardvault`: the same CLI as the `shardvault` command."""

import sys

from shardvault.cli.app import main

sys.exit(main())
