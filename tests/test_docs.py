"""The CLI reference documents every command, and the README's quick start is what CI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from shardvault.catalog.sqlite import SCHEMA_VERSION
from shardvault.cli import app as cli_app
from shardvault.demo import write_demo

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
        "Manifest (version 2)",
        "Keyring (version 2)",
        "Config (version 1)",
        f"Catalog schema (version {SCHEMA_VERSION})",
    ):
        assert heading in formats


def _block(text: str, after: str, language: str) -> str:
    """The first fenced block of `language` after the line `after`."""
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_readmes_commands_run_as_written(tmp_path: Path) -> None:
    # all but the two that need what a reader must first make: approvals, a token
    commands = [
        line.split("  #")[0].strip()
        for line in _block((ROOT / "README.md").read_text(), "## Using it", "sh").splitlines()
        if "forget" not in line and "$TOKEN" not in line
    ]
    assert len(commands) >= 10
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv the README's PATH line names
    (tmp_path / "beach.jpg").write_bytes(os.urandom(5000))
    (tmp_path / "app-src").mkdir()
    (tmp_path / "app-src" / "feed.py").write_text("print('hello')\n")
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)],
        cwd=tmp_path, capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.jpg").read_bytes() == (tmp_path / "beach.jpg").read_bytes()
    assert (tmp_path / "audit-us.tar").is_file()


def test_the_readmes_library_example_runs_as_written(tmp_path: Path) -> None:
    write_demo(tmp_path / "mydeploy")
    example = _block((ROOT / "README.md").read_text(), "As a library:", "python")
    done = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
