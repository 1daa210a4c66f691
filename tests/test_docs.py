"""The CLI reference documents every command, and the README's quick start is what CI runs."""

from __future__ import annotations

from pathlib import Path

import typer

from shardvault.catalog.sqlite import SCHEMA_VERSION
from shardvault.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[1]


def _command_paths() -> list[str]:
    cli_app._register_commands()
    group = typer.main.get_command(cli_app.app)
    paths = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            paths.extend(f"{name} {sub}" for sub in subcommands)
        else:
            paths.append(name)
    return sorted(paths)


def test_every_command_has_a_section_in_the_cli_reference() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text()
    paths = _command_paths()
    assert len(paths) >= 12
    missing = [path for path in paths if f"## `shardvault {path}" not in reference]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_persisted_format_is_documented_with_its_version() -> None:
    formats = (ROOT / "docs" / "formats.md").read_text()
    for heading in (
        "Shard file (version 1)",
        "Manifest (version 1)",
        "Keyring (version 1)",
        "Config (version 1)",
        f"Catalog schema (version {SCHEMA_VERSION})",
    ):
        assert heading in formats
