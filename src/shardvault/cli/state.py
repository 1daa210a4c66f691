"""What every command shares: the config path, and the vault opened from it on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from shardvault import config as config_module
from shardvault.vault import Vault


@dataclass
class CliState:
    config_path: Path | None = None
    _vault: Vault | None = field(default=None, repr=False)

    def vault(self) -> Vault:
        if self._vault is None:
            cfg = config_module.load(config_module.resolve_path(self.config_path))
            self._vault = Vault.open(cfg)
        return self._vault

    def close(self) -> None:
        if self._vault is not None:
            self._vault.close()
            self._vault = None


def state(ctx: typer.Context) -> CliState:
    found = ctx.find_root().obj
    assert isinstance(found, CliState)
    return found
