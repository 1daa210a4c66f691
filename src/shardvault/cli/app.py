"""Entry point: builds the Typer app and maps every ShardvaultError to one line and an exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from shardvault.cli.state import CliState
from shardvault.errors import ShardvaultError

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
) -> None:
    ctx.obj = CliState(config_path=config)
    ctx.call_on_close(ctx.obj.close)


def _register_commands() -> None:
    from shardvault.cli import admin, objects, scan_cmd

    admin.register(app)
    objects.register(app)
    scan_cmd.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a user's mistake is one line on stderr and an exit code, never a traceback."""
    _register_commands()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="shardvault", standalone_mode=False)
    except ShardvaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
