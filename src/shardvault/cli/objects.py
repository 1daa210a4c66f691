"""Object commands: put, get, ls, stat, rm, versions, where."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from shardvault.cli.output import info_rows, print_json, print_table, say, to_plain
from shardvault.cli.progress import transfer_bar
from shardvault.cli.state import state
from shardvault.errors import InvalidInput
from shardvault.model import ObjectRef

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Version = Annotated[int | None, typer.Option("--version", "-v", help="A specific version.")]


def _open_source(file: str) -> tuple[BinaryIO, int | None]:
    if file == "-":
        return sys.stdin.buffer, None
    path = Path(file)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
    if not path.is_file():
        handle.close()
        raise InvalidInput(f"cannot read {file}: not a regular file")
    return handle, os.fstat(handle.fileno()).st_size


def put(
    ctx: typer.Context,
    tenant: str,
    subject: str,
    key: str,
    file: Annotated[str, typer.Argument(help="File to store, or - for stdin.")],
    if_match: Annotated[
        int | None,
        typer.Option("--if-match", help="Refuse unless this is the current version (0: new)."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Store FILE as a new version of KEY."""
    ref = ObjectRef(tenant, subject, key)
    source, size = _open_source(file)
    try:
        with transfer_bar(f"put {key}", size) as advance:
            cli = state(ctx)
            info = cli.vault().put(
                ref, source, if_match=if_match, ctx=cli.request("write"), progress=advance
            )
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    if json_out:
        print_json(info)
    else:
        say(f"stored {ref} version {info.version} ({info.size} bytes, {info.segments} segments)")


def get(
    ctx: typer.Context,
    tenant: str,
    subject: str,
    key: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    version: Version = None,
) -> None:
    """Read KEY (the current version unless --version) to stdout or a file."""
    cli = state(ctx)
    vault = cli.vault()
    reader = vault.open_read(ObjectRef(tenant, subject, key), version, cli.request("read"))
    with reader, transfer_bar(f"get {key}", reader.info.size) as advance:
        if output is None:
            sink = sys.stdout.buffer
            for chunk in reader:
                sink.write(chunk)
                advance(len(chunk))
            sink.flush()
        else:
            _write_file_atomically(output, reader, advance)
    vault.report_damage(reader.damage)
    if reader.damage:
        say(
            f"[yellow]warning:[/] read around {len(reader.damage)} damaged or missing "
            "shard block(s); queued for repair"
        )


def _write_file_atomically(path: Path, chunks: object, advance: object) -> None:
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with temp.open("wb") as sink:
            for chunk in chunks:  # type: ignore[attr-defined]
                sink.write(chunk)
                advance(len(chunk))  # type: ignore[operator]
        temp.replace(path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def ls(
    ctx: typer.Context,
    tenant: str,
    subject: str,
    prefix: Annotated[str, typer.Option(help="Only keys starting with this.")] = "",
    start_after: Annotated[str, typer.Option(help="Continue after this key.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many keys per page.")] = 1000,
    json_out: JsonFlag = False,
) -> None:
    """List a subject's objects (current versions), one page at a time."""
    cli = state(ctx)
    page = cli.vault().list(
        tenant, subject, prefix=prefix, start_after=start_after, limit=limit, ctx=cli.request()
    )
    if json_out:
        print_json({"items": page.items, "next_after": page.next_after})
        return
    print_table(f"{tenant}/{subject}", ["key", "version", "size", "created"], info_rows(page.items))
    if page.next_after is not None:
        say(f"more: --start-after {page.next_after!r}")


def stat(
    ctx: typer.Context,
    tenant: str,
    subject: str,
    key: str,
    version: Version = None,
    json_out: JsonFlag = False,
) -> None:
    """Show an object's metadata (never its data or keys)."""
    cli = state(ctx)
    info = cli.vault().stat(ObjectRef(tenant, subject, key), version, cli.request())
    if json_out:
        print_json(info)
        return
    plain = to_plain(info)
    print_table(str(info.ref), ["field", "value"], [[k, v] for k, v in plain.items()])


def rm(
    ctx: typer.Context,
    tenant: str,
    subject: str,
    key: str,
    version: Version = None,
    json_out: JsonFlag = False,
) -> None:
    """Delete an object (all versions, or one); gc collects its shards."""
    cli = state(ctx)
    removed = cli.vault().delete(ObjectRef(tenant, subject, key), version, cli.request())
    if json_out:
        print_json({"deleted_versions": removed})
    else:
        say(f"deleted {removed} version(s) of {tenant}/{subject}/{key}")


def versions(
    ctx: typer.Context, tenant: str, subject: str, key: str, json_out: JsonFlag = False
) -> None:
    """List the committed versions of one key, newest first."""
    cli = state(ctx)
    found = cli.vault().versions(ObjectRef(tenant, subject, key), cli.request())
    if json_out:
        print_json({"versions": found})
        return
    print_table(
        f"{tenant}/{subject}/{key}", ["key", "version", "size", "created"], info_rows(found)
    )


def where(
    ctx: typer.Context,
    tenant: str,
    subject: str,
    key: str,
    version: Version = None,
    json_out: JsonFlag = False,
) -> None:
    """Show where every shard of an object lives: node, jurisdiction, facility."""
    ref = ObjectRef(tenant, subject, key)
    cli = state(ctx)
    vault = cli.vault()
    info = vault.stat(ref, version, cli.request())
    shards = vault.where(ref, version, cli.request())
    if json_out:
        print_json(
            {
                "tenant": tenant,
                "subject": subject,
                "key": key,
                "version": info.version,
                "shards": shards,
            }
        )
        return
    first = [s for s in shards if s.segment == 0]
    print_table(
        f"{ref} v{info.version}: {info.segments} segment(s), shards of segment 0 "
        "(every segment uses the same nodes)",
        ["shard", "node", "jurisdiction", "facility"],
        [[s.index, s.node, s.jurisdiction, s.facility] for s in first],
    )


def register(app: typer.Typer) -> None:
    for command in (put, get, ls, stat, rm, versions, where):
        app.command()(command)
