"""Object commands: put, get, ls, stat, rm, versions, where."""

from __future__ import annotations

import errno
import os
import stat as stat_module
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

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
from shardvault.durability import write_failure
from shardvault.errors import InvalidInput
from shardvault.model import ObjectRef

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Version = Annotated[int | None, typer.Option("--version", "-v", help="A specific version.")]


def _open_source(file: str) -> tuple[BinaryIO, int | None]:
    """Open FILE (or stdin) to read; a FIFO or device is refused before opening, where it
    could block forever or never end."""
    if file == "-":
        if sys.stdin is None:
            raise InvalidInput("stdin is closed: give a FILE, or pipe the data in")
        return sys.stdin.buffer, None
    try:
        if not stat_module.S_ISREG(os.stat(file).st_mode):
            raise InvalidInput(f"cannot read {file}: not a regular file")
        # O_NONBLOCK: should the path become a FIFO after the check, open still returns
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
    handle = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat_module.S_ISREG(info.st_mode):
        handle.close()
        raise InvalidInput(f"cannot read {file}: not a regular file")
    os.set_blocking(fd, True)
    return handle, info.st_size


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
    except OSError as exc:  # the vault turns its own I/O errors into StorageError: the source's
        what = "standard input" if file == "-" else file
        raise InvalidInput(
            f"cannot read {what}: {exc.strerror or exc}; nothing was stored"
        ) from exc
    finally:
        if file != "-":
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
    if output is not None:
        _check_output(output)
    cli = state(ctx)
    vault = cli.vault()
    reader = vault.open_read(ObjectRef(tenant, subject, key), version, cli.request("read"))
    with reader, transfer_bar(f"get {key}", reader.info.size) as advance:
        if output is None:
            for chunk in reader:
                write_out(chunk)
                advance(len(chunk))
        else:
            _write_output(output, reader, advance)
    vault.report_damage(reader.damage)
    if reader.damage:
        warn(
            f"read around {len(reader.damage)} damaged or missing shard block(s); queued for repair"
        )


def _check_output(path: Path) -> None:
    """Refuse, before anything is read, what a shell redirection would: a directory,
    a symlink loop, an existing file this user may not write."""
    if not path.name or path.is_dir():
        raise InvalidInput(f"-o {path} is a directory; give a file name")
    target = _output_target(path)
    if target.exists() and not os.access(target, os.W_OK):
        raise write_failure(str(path), PermissionError(errno.EACCES, os.strerror(errno.EACCES)))


def _output_target(path: Path) -> Path:
    """The file ``-o PATH`` writes: where its symlinks lead (made if the last dangles)."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return Path(os.path.realpath(path))
    except OSError as exc:  # a loop of symlinks
        raise write_failure(str(path), exc) from None


def _write_output(path: Path, chunks: Iterable[bytes], advance: Callable[[int], None]) -> None:
    """Write the object to PATH, leaving PATH untouched if the read fails.

    A device or FIFO is written into, as a shell redirection would: replacing it
    (``-o /dev/null`` as root) would break the system. A symlink stays a link:
    the file it points to is the one replaced, keeping its mode and owner.
    """
    target = _output_target(path)
    try:
        found: os.stat_result | None = target.stat()
    except OSError:
        found = None  # absent (or unreadable): write it atomically, errors reported there
    if found is not None and not stat_module.S_ISREG(found.st_mode):
        _write_into(target, chunks, advance, shown=path)
    else:
        _write_atomically(target, chunks, advance, shown=path, replaces=found)


def _write_into(
    target: Path, chunks: Iterable[bytes], advance: Callable[[int], None], shown: Path
) -> None:
    """Stream into an existing device or FIFO (never created: O_CREAT is not passed)."""
    try:
        with os.fdopen(os.open(target, os.O_WRONLY), "wb") as sink:
            for chunk in chunks:
                sink.write(chunk)
                advance(len(chunk))
    except OSError as exc:
        raise write_failure(str(shown), exc) from None


def _write_atomically(
    target: Path,
    chunks: Iterable[bytes],
    advance: Callable[[int], None],
    shown: Path,
    replaces: os.stat_result | None = None,
) -> None:
    """Write a temporary file next to TARGET, then rename it over TARGET (whose mode and,
    where this user may give it, owner the new file takes)."""
    temp = target.with_name(f".{target.name[:200]}.partial-{os.getpid()}")
    created = False
    try:
        with temp.open("xb") as sink:
            created = True
            if replaces is not None:  # before any data: a 0600 file's never shows at 0644
                os.fchmod(sink.fileno(), stat_module.S_IMODE(replaces.st_mode))
                with suppress(PermissionError):  # only root may give a file away
                    os.fchown(sink.fileno(), replaces.st_uid, replaces.st_gid)
            for chunk in chunks:
                sink.write(chunk)
                advance(len(chunk))
        temp.replace(target)
    except BaseException as exc:
        if created:
            with suppress(OSError):  # the original error is the one to report
                temp.unlink()
        if isinstance(exc, OSError):
            raise write_failure(str(shown), exc) from None
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
