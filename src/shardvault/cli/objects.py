"""Object commands: put, get, ls, stat, rm, versions, where."""

from __future__ import annotations

import os
import shlex
import stat as stat_module
import sys
from typing import Annotated, BinaryIO

import typer

from shardvault.cli.deployment_files import output_outside
from shardvault.cli.options import JsonFlag, Subject, Tenant
from shardvault.cli.outfile import write_output
from shardvault.cli.output import (
    info_rows,
    print_json,
    print_table,
    say,
    to_plain,
    warn,
    write_out,
)
from shardvault.cli.progress import transfer_bar
from shardvault.cli.state import state
from shardvault.durability import open_given
from shardvault.errors import InvalidInput
from shardvault.model import ObjectRef, ShardLocation, named
from shardvault.path_limits import os_reason

Version = Annotated[
    int | None, typer.Option("--version", "-v", metavar="N", help="A specific version.")
]
# named as docs/cli.md names them (tests/test_docs.py), not by Typer's types
Key = Annotated[str, typer.Argument(metavar="KEY")]


def _open_source(file: str) -> tuple[BinaryIO, int | None]:
    """Open FILE (or stdin) to read, with its size if it has one: a regular file, or a
    pipe the shell opened (`<(cmd)`), streamed. A named FIFO or a device is refused
    before opening, where it could block forever or never end (`open_given`)."""
    if file == "-":
        if sys.stdin is None:
            raise InvalidInput("stdin is closed: give a FILE, or pipe the data in")
        return sys.stdin.buffer, None
    if not file:  # open("") says "No such file": name what is missing, as other paths do
        raise InvalidInput("FILE is empty; give a path")
    try:
        source = open_given(file)
    except OSError as exc:
        raise InvalidInput(f"cannot read {named(file)}: {os_reason(exc)}") from None
    info = os.fstat(source.fileno())
    return source, info.st_size if stat_module.S_ISREG(info.st_mode) else None


def put(
    ctx: typer.Context,
    tenant: Tenant,
    subject: Subject,
    key: Key,
    file: Annotated[str, typer.Argument(metavar="FILE", help="File to store, or - for stdin.")],
    if_match: Annotated[
        int | None,
        typer.Option(
            "--if-match", metavar="N", help="Refuse unless this is the current version (0: new)."
        ),
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
    except OSError as exc:  # the vault turns its own I/O errors into StorageError: the source's
        what = "standard input" if file == "-" else file
        raise InvalidInput(
            f"cannot read {named(what)}: {os_reason(exc)}; nothing was stored"
        ) from exc
    finally:
        if file != "-":
            source.close()
    if json_out:
        print_json(info)
    else:
        segments = "1 segment" if info.segments == 1 else f"{info.segments} segments"
        say(f"stored {ref} version {info.version} ({info.size} bytes, {segments})")


def get(
    ctx: typer.Context,
    tenant: Tenant,
    subject: Subject,
    key: Key,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write here instead of stdout (- for stdout)."
        ),
    ] = None,
    version: Version = None,
) -> None:
    """Read KEY (the current version unless --version) to stdout or a file."""
    cli = state(ctx)
    # `-` is stdout, as put's FILE `-` is stdin: not a file named '-' (`./-` names one)
    destination = None if output == "-" else output_outside(output, cli.config())
    vault = cli.vault()
    reader = vault.open_read(ObjectRef(tenant, subject, key), version, cli.request("read"))
    with reader, transfer_bar(f"get {key}", reader.info.size) as advance:
        if destination is None:
            for chunk in reader:
                write_out(chunk)
                advance(len(chunk))
        else:
            write_output(destination, reader, advance)
    queued = vault.report_damage(reader.damage)
    if queued:
        warn(f"read around {len(queued)} damaged or missing shard block(s); queued for repair")


def ls(
    ctx: typer.Context,
    tenant: Tenant,
    subject: Subject,
    prefix: Annotated[str, typer.Option(metavar="P", help="Only keys starting with this.")] = "",
    start_after: Annotated[str, typer.Option(metavar="K", help="Continue after this key.")] = "",
    limit: Annotated[
        int, typer.Option(metavar="N", help="At most this many keys per page.")
    ] = 1000,
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
        # quoted for a shell, not by repr: "it's $HOME" would be expanded there
        say(f"more: --start-after {shlex.quote(page.next_after)}")


def stat(
    ctx: typer.Context,
    tenant: Tenant,
    subject: Subject,
    key: Key,
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
    tenant: Tenant,
    subject: Subject,
    key: Key,
    version: Version = None,
    if_match: Annotated[
        int | None,
        typer.Option("--if-match", metavar="N", help="Refuse unless this is the current version."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Delete an object (all versions, or one); gc collects its shards."""
    cli = state(ctx)
    ref = ObjectRef(tenant, subject, key)
    removed = cli.vault().delete(ref, version, cli.request(), if_match=if_match)
    if json_out:
        print_json({"tenant": tenant, "subject": subject, "key": key, "deleted_versions": removed})
    else:
        say(f"deleted {removed} version(s) of {tenant}/{subject}/{key}")


def versions(
    ctx: typer.Context, tenant: Tenant, subject: Subject, key: Key, json_out: JsonFlag = False
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
    tenant: Tenant,
    subject: Subject,
    key: Key,
    version: Version = None,
    json_out: JsonFlag = False,
) -> None:
    """Show where every shard of an object lives: node, jurisdiction, facility."""
    ref = ObjectRef(tenant, subject, key)
    cli = state(ctx)
    vault = cli.vault()
    request = cli.request()  # one request, however many decisions: counted once
    info = vault.stat(ref, version, request)
    shards = vault.where(ref, info.version, request)  # that version's, whatever was put since
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
        [[s.index, s.node, s.jurisdiction, _facility(s)] for s in first],
    )


def _facility(shard: ShardLocation) -> str:
    """The facility as `where` shows it: for a node the config no longer lists, in
    words no facility's name can hold (a configured one may be named ``unknown``)."""
    return shard.facility if shard.in_config else "(node not in the config)"


def register(app: typer.Typer) -> None:
    for command in (put, get, ls, stat, rm, versions, where):
        app.command()(command)
