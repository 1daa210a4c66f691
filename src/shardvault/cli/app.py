"""Entry point: builds the Typer app and maps every ShardvaultError to one line and an exit code."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated

import typer

from shardvault.cli.state import CliState
from shardvault.errors import ShardvaultError
from shardvault.model import named

app = typer.Typer(
    name="shardvault",
    help="Encrypted, erasure-coded, jurisdiction-pinned storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Deployment file (default: $SHARDVAULT_CONFIG, else ./shardvault.toml).",
        ),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--as", help="Act as this principal (needs its --token; default: local-admin)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="API token (default: $SHARDVAULT_TOKEN).", show_default=False),
    ] = None,
    purpose: Annotated[
        str | None, typer.Option("--purpose", help="Why: recorded in the audit log.")
    ] = None,
    approval: Annotated[
        str | None, typer.Option("--approval", help="A met approval id for this request.")
    ] = None,
) -> None:
    ctx.obj = CliState(
        config_path=config, principal=principal, token=token, purpose=purpose, approval=approval
    )
    ctx.call_on_close(ctx.obj.close)


_registered = False


def _register_commands() -> None:
    """Once per process: main() may run many times in one process (tests, embedding)."""
    global _registered
    if _registered:
        return
    from shardvault.cli import admin, audit_cmds, governance_cmds, objects, scan_cmd

    admin.register(app)
    objects.register(app)
    governance_cmds.register(app)
    audit_cmds.register(app)
    scan_cmd.register(app)
    _registered = True


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a user's mistake is one line on stderr and an exit code, never a traceback.

    Usage errors are left to the command framework's standalone mode (exit 2
    with its usage line); our own errors are mapped here by their class.
    """
    _register_commands()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="shardvault", standalone_mode=True)
    except ShardvaultError as exc:
        _error(str(exc))
        return exc.exit_code
    except SystemExit as exc:
        if _caused_by_interrupt(exc):
            return _interrupted()
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:  # a path the user gave that cannot be used, or a failing disk
        where = f": {named(str(exc.filename))}" if exc.filename is not None else ""
        _error(f"{exc.strerror or exc}{where}")
        return 2 if exc.errno in _BAD_PATH else 1
    return 0


# errors of a path as given (too long, missing, not a directory...): bad input, exit 2
_BAD_PATH = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.EACCES,
        errno.EPERM,
        errno.EEXIST,
    }
)


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Typer turns Ctrl-C into a silent exit 130; the KeyboardInterrupt is in the chain."""
    visited: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in visited:
        if isinstance(link, KeyboardInterrupt):
            return True
        visited.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _interrupted() -> int:
    _error("interrupted")
    return 130


def _error(message: str) -> None:
    """One line on stderr; with stderr closed, none (print would fall back to stdout,
    mixing an error into the data a script reads): the exit code still says it."""
    if sys.stderr is not None:
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
