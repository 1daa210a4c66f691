"""``shardvault scan``: a thin skin over ``shardvault.scan.scan_tree``.

Exit codes: 0 nothing at or above ``--fail-on``, 1 something is, 2 bad usage or input
(a scan that read no source file among it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from shardvault.cli.deployment_files import output_outside
from shardvault.cli.given import check_readable, path_named
from shardvault.cli.outfile import Output, checked_output, write_output
from shardvault.cli.output import write_out
from shardvault.cli.state import state
from shardvault.errors import InvalidInput, Refused, ShardvaultError
from shardvault.model import shown


def scan(
    ctx: typer.Context,
    # parsed by path_named, not checked by Click (whose check printed a boxed usage
    # error): the command's code says in one line what it could not read; outputs are
    # taken as str, as get -o: a Path would read "" as "." (the current directory)
    # metavars as docs/scanner.md names them (tests/test_docs.py), not Typer's types
    path: Path = typer.Argument(
        ..., metavar="PATH", help="Source tree (or one file) to scan.", parser=path_named("PATH")
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        metavar="FILE",
        help="TOML policy file (version = 1).",
        parser=path_named("--policy"),
    ),
    output_format: str = typer.Option(
        "table", "--format", metavar="table|json|sarif", help="The report's format."
    ),
    fail_on: str = typer.Option(
        "high", "--fail-on", metavar="high|medium|low", help="Exit 1 at this or above."
    ),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        metavar="FILE",
        help="Accept findings listed here.",
        parser=path_named("--baseline"),
    ),
    write_baseline_to: str | None = typer.Option(
        None,
        "--write-baseline",
        metavar="FILE",
        help="Write all current findings as a baseline, exit 0.",
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", metavar="FILE", help="Write the report here."
    ),
    jobs: int = typer.Option(0, "--jobs", metavar="N", help="Worker processes (0: one per CPU)."),
    include_vendored: bool = typer.Option(
        False, "--include-vendored", help="Also scan node_modules, vendor, Pods, ..."
    ),
    no_gitignore: bool = typer.Option(False, "--no-gitignore", help="Ignore .gitignore files."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Follow symlinks."),
    max_file_bytes: int = typer.Option(
        8 * 1024 * 1024, metavar="N", help="Skip files larger than this."
    ),
    max_line_chars: int = typer.Option(
        20_000, metavar="N", help="Skip files with a longer line (minified); 0 means no limit."
    ),
) -> None:
    """Scan source for hard-coded foreign endpoints and clipboard reads."""
    # imported here, not at start-up: every other command would pay for the scanner
    from shardvault.scan import (
        Limits,
        Policy,
        ScanOptions,
        Severity,
        WalkOptions,
        baseline_text,
        load_baseline,
        load_policy,
        scan_tree,
    )
    from shardvault.scan.render import render_json, render_table
    from shardvault.scan.sarif import render_sarif

    renderers = {"table": render_table, "json": render_json, "sarif": render_sarif}
    if output_format not in renderers:
        raise InvalidInput(f"--format must be table, json or sarif, not {shown(output_format)}")
    try:
        threshold = Severity.parse(fail_on)
    except ValueError as exc:
        raise InvalidInput(f"--fail-on: {exc}") from exc
    if jobs < 0:
        raise InvalidInput("--jobs must be 0 (one per CPU) or more")
    if max_file_bytes <= 0 or max_line_chars < 0:
        raise InvalidInput("--max-file-bytes must be positive and --max-line-chars not negative")
    options = ScanOptions(
        policy=load_policy(policy) if policy is not None else Policy(),
        walk=WalkOptions(
            include_vendored=include_vendored,
            use_gitignore=not no_gitignore,
            follow_symlinks=follow_symlinks,
        ),
        limits=Limits(max_file_bytes=max_file_bytes, max_line_chars=max_line_chars),
        jobs=jobs,
        baseline=load_baseline(baseline) if baseline is not None else None,
    )
    if path.exists():  # a missing one the scanner reports, in its words
        check_readable(path)  # skipped, it would pass a gate having scanned nothing
    # checked before the scan, which may be long; written whole or not at all
    baseline_output = _output(ctx, write_baseline_to, "--write-baseline", "the baseline")
    report_output = _output(ctx, output, "--output", "the report")
    report = scan_tree(path, options)
    if baseline_output is not None:
        _check_scanned(report.files, len(report.skipped), path)
        text, count = baseline_text(report.all_findings())
        write_output(baseline_output, [text.encode("utf-8")], lambda _n: None)
        print(f"wrote {count} finding(s) to baseline {write_baseline_to}", file=sys.stderr)
        return
    text = renderers[output_format](report)
    if report_output is not None:
        write_output(report_output, [text.encode("utf-8")], lambda _n: None)
    else:
        write_out(text)
    _check_scanned(report.files, len(report.skipped), path)
    if failing := report.failing(threshold):
        # Refused maps to exit 1 with one line on stderr, like every other rule that says no.
        raise Refused(f"{len(failing)} finding(s) at or above --fail-on {threshold.label}")


def _check_scanned(files: int, skipped: int, path: Path) -> None:
    """A scan that read no source file proves nothing: a wrong PATH, a .gitignore or
    extensions the scanner does not know would otherwise pass the gate (exit 0)."""
    if files == 0:
        raise InvalidInput(
            f"no source file scanned under {path} ({skipped} skipped): nothing to vouch for"
        )


def _output(ctx: typer.Context, given: str | None, option: str, written: str) -> Output | None:
    """Where OPTION writes, checked as `get -o` checks it, and kept out of the files of
    the deployment the config names, if there is one: a scan needs none."""
    if given is None:
        return None
    try:
        config = state(ctx).config()
    except ShardvaultError:
        return checked_output(given, option)
    return output_outside(given, config, option, written)


def register(app: typer.Typer) -> None:
    """Add the ``scan`` command to the shardvault CLI."""
    app.command("scan")(scan)
