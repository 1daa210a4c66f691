"""What every command shares: the config, the acting principal, and the vault opened on demand."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from shardvault import config as config_module
from shardvault.cli.output import warn
from shardvault.cli.watchdog import Watchdog
from shardvault.errors import AccessDenied, ConfigError, InvalidInput
from shardvault.model import LOCAL_ADMIN, RequestContext, new_request_id, shown

if TYPE_CHECKING:  # loaded on first use: commands that never open the vault start faster
    from shardvault.governance import Governance
    from shardvault.vault import Vault


@dataclass
class CliState:
    config_path: str | None = None
    principal: str | None = None
    token: str | None = None
    purpose: str | None = None
    approval: str | None = None
    watchdog: Watchdog | None = None  # told the config's deadline once it is read
    _config: config_module.Config | None = field(default=None, repr=False)
    _governance: Governance | None = field(default=None, repr=False)
    _vault: Vault | None = field(default=None, repr=False)

    def config(self) -> config_module.Config:
        if self._config is None:
            config = config_module.load(config_module.resolve_path(self.config_path))
            _refuse_memory(config)
            if self.watchdog is not None:
                self.watchdog.seconds = config.state_timeout
            self._config = config
        return self._config

    def governance(self) -> Governance:
        if self._governance is None:
            from shardvault.governance import Governance

            self._governance = Governance.open(self.config())
        return self._governance

    def vault(self) -> Vault:
        if self._vault is None:
            from shardvault.vault import Vault

            self._vault = Vault.open(self.config(), governance=self.governance())
        return self._vault

    def request(self, default_purpose: str = "operations") -> RequestContext:
        """The request context: the token's principal (or the local administrator).

        An empty token or principal is refused, not read as none: a script whose
        token variable came out empty would otherwise act as the administrator.
        So is an empty purpose, which would otherwise be the command's default."""
        if self.token == "":
            raise InvalidInput(
                "--token is empty: pass a principal's token, or leave it out to act as the "
                "local administrator"
            )
        if self.principal == "":
            raise InvalidInput(
                "--as is empty: name the principal whose token is given, or leave it out"
            )
        if self.purpose == "":  # else the command's default was audited as the purpose
            raise InvalidInput(
                "--purpose is empty: say why (the audit log records it), or leave it out "
                "for the command's default"
            )
        if self.token is None and os.environ.get(config_module.TOKEN_ENV_VAR) == "":
            raise InvalidInput(
                f"{config_module.TOKEN_ENV_VAR} is set but empty: set it to a token, or "
                "unset it to act as the local administrator"
            )
        token = self.token or config_module.token_from_env()
        refused = None
        if token:  # a genuine but revoked or expired token: refused by the guard, audited
            principal, refused = self.governance().registry.identify(token)
            if self.principal not in (None, principal):
                raise InvalidInput(f"--as {shown(self.principal, 60)} is not the token's principal")
        else:
            principal = self.principal or LOCAL_ADMIN
            if principal != LOCAL_ADMIN:
                raise AccessDenied(
                    f"acting as {shown(principal, 60)} needs its token: pass --token or set "
                    f"{config_module.TOKEN_ENV_VAR}"
                )
        return RequestContext(
            principal,
            self.purpose or default_purpose,
            new_request_id(),
            approval_id=self.approval,
            refused_credential=refused,
        )

    def require_local_admin(self, what: str) -> None:
        """Administration of the deployment itself is for the local administrator only,
        and only where the deployment enables it (``governance.local_admin``)."""
        if self.request().principal != LOCAL_ADMIN:
            raise AccessDenied(
                f"{what} is for the local administrator (run it without --as/--token)"
            )
        spec = self.config().governance
        if spec is not None and not spec.local_admin:
            raise AccessDenied(
                f"{what} is for the local administrator, who is disabled in this deployment "
                "(governance.local_admin = false)"
            )

    def close(self) -> None:
        if self._vault is not None:
            self._vault.close()
            for notice in self._vault.deadline.hint_notices():  # a hint lost costs time only
                warn(notice)
            self._vault = None
        if self._governance is not None:
            self._governance.close()
            self._governance = None


def _refuse_memory(config: config_module.Config) -> None:
    """Memory nodes and a memory custodian keep nothing after the process: a command
    would say "stored" and the next find nothing (or no key to read it with). They are
    for a program that embeds the vault in one process, not for commands."""
    memory = [f"nodes {n.id}.backend" for n in config.nodes if n.backend == "memory"]
    if config.custodian == "memory":
        memory.append("custodian.backend")
    if memory:
        raise ConfigError(
            f"config {config.path}: {', '.join(memory)} is 'memory', which keeps nothing "
            "after this command: use 'local' nodes and the 'keyring' custodian (memory "
            "ones are for a program embedding the vault in one process)"
        )


def state(ctx: typer.Context) -> CliState:
    found = ctx.find_root().obj
    assert isinstance(found, CliState)
    return found
