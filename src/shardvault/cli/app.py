"""Entry point: builds the Typer app and maps every ShardvaultError to one line and an exit code."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from shardvault.cli.state import CliState
from shardvault.cli.watchdog import Watchdog
from shardvault.config import DEFAULT_STATE_TIMEOUT
from shardvault.errors import ShardvaultError
from shardvault.model import named, one_line, repr_escaped, shown
from shardvault.path_limits import why_too_long


class _HelpContext(typer.Context):
    """A command's context, whose help (``--help``, or what a group given no command
    shows) fails as all output does where stdout cannot take it: Rich wrote it to
    nothing with stdout closed (exit 0), and a full disk's error did not say whose."""

    def get_help(self) -> str:  # what both ways to help call, Rich printing it
        from shardvault.cli.output import onto_stdout

        with onto_stdout():
            return super().get_help()

    @contextmanager
    def scope(self, cleanup: bool = True) -> Iterator[_HelpContext]:
        """The framework parses a command's arguments in this scope. Its parser raises a
        few usage errors without their context (an option given no value, `-o` last; a
        flag given one, `--json=x`): printed without the usage line and the hint every
        other usage error has. They are given this context, the command's."""
        try:
            with super().scope(cleanup):
                yield self
        except typer.TyperException as exc:  # the framework's own click, vendored
            if getattr(exc, "ctx", self) is None:  # a usage error made without it
                exc.ctx = self  # type: ignore[attr-defined]
            raise


def _with_help_context(command: Any) -> Any:
    """COMMAND and every command under it, each making a `_HelpContext`: the framework
    makes a command's context of that command's own class, not its parent's."""
    command.context_class = _HelpContext
    for sub in getattr(command, "commands", {}).values():
        _with_help_context(sub)
    return command


class _Commands(TyperGroup):
    """The command tree, whose usage errors (the framework's own: an unknown command or
    option, an extra argument, a bad value) escape what they repeat as our error lines
    do: a byte not UTF-8 was Python's surrogate there, \\udcff or 'x\\udcff'."""

    def make_context(  # the global options are parsed here
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        with _usage_escaped():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:  # and each command's arguments here
        with _usage_escaped():
            return super().invoke(ctx)


@contextmanager
def _usage_escaped() -> Iterator[None]:
    """A usage error's message, escaped line by line (a help text shown for no arguments
    is one too) before the framework prints it in its box."""
    try:
        yield
    except typer.TyperException as exc:
        lines = exc.message.split("\n")
        exc.message = "\n".join(one_line(repr_escaped(line)) for line in lines)
        _name_the_number(exc)
        raise


_NUMBERS = {int: "a valid integer", float: "a valid number"}
_NOT_A_NUMBER = frozenset({"int_parsing", "float_parsing", "string_unicode"})


def _name_the_number(exc: typer.TyperException) -> None:
    """A number option's or argument's bad value, named as click named it (``'x\\xff' is
    not a valid integer``): Typer's validator said "Input should be a valid integer,
    unable to parse string as an integer", and for a value not UTF-8 "Input should be a
    valid string, unable to parse raw data as a unicode string", naming neither the
    value nor, there, what was wanted. Any other error is left as it is."""
    from pydantic import ValidationError  # only here: Typer's, on this error path only

    cause, param = exc.__cause__, getattr(exc, "param", None)
    if not isinstance(cause, ValidationError) or not cause.errors():
        return
    first = cause.errors()[0]
    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if first["type"] in _NOT_A_NUMBER and kind in _NUMBERS and isinstance(first["input"], str):
        exc.message = f"{shown(first['input'])} is not {_NUMBERS[kind]}"


app = typer.Typer(
    name="shardvault",
    cls=_Commands,
    help="Encrypted, erasure-coded, jurisdiction-pinned storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(given: bool) -> None:
    """`--version`: which shardvault a script is driving (a file of a newer one says upgrade).
    Written as all output is: echo wrote nothing to a closed stdout, and exited 0."""
    if given:
        from shardvault import __version__
        from shardvault.cli.output import write_out

        write_out(f"shardvault {__version__}\n")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        str | None,  # not a Path, which reads "" as ".": config.resolve_path refuses it
        typer.Option(
            "--config",
            metavar="PATH",
            help="Deployment file (default: $SHARDVAULT_CONFIG, else ./shardvault.toml).",
        ),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--as",
            metavar="ID",
            help="Act as this principal (needs its --token; default: local-admin).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="API token (default: $SHARDVAULT_TOKEN).",
            show_default=False,
        ),
    ] = None,
    purpose: Annotated[
        str | None,
        typer.Option("--purpose", metavar="P", help="Why: recorded in the audit log."),
    ] = None,
    approval: Annotated[
        str | None,
        typer.Option("--approval", metavar="ID", help="A met approval id for this request."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    watchdog = ctx.obj if isinstance(ctx.obj, Watchdog) else None  # main's, if any
    ctx.obj = CliState(
        config_path=config,
        principal=principal,
        token=token,
        purpose=purpose,
        approval=approval,
        watchdog=watchdog,
    )
    ctx.call_on_close(ctx.obj.close)


_registered = False


def _register_commands() -> None:
    """Once per process: main() may run many times in one process (tests, embedding)."""
    global _registered
    if _registered:
        return
    from shardvault.cli import (
        admin,
        approval_cmds,
        audit_cmds,
        objects,
        policy_cmds,
        principal_cmds,
        scan_cmd,
    )

    admin.register(app)
    objects.register(app)
    principal_cmds.register(app)
    approval_cmds.register(app)
    policy_cmds.register(app)
    audit_cmds.register(app)
    scan_cmd.register(app)
    _registered = True


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a user's mistake is one line on stderr and an exit code, never a traceback.

    Usage errors are left to the command framework's standalone mode (exit 2
    with its usage line); our own errors are mapped here by their class. Run on the
    process's own arguments (``argv`` none: the `shardvault` command), the command is
    watched for a disk that hangs, which ends the process (cli/watchdog.py); a program
    passing ``argv`` is never ended so.
    """
    _register_commands()
    if argv is not None and (unpassable := _unpassable(argv)) is not None:
        _error(unpassable)
        return 2
    watchdog = Watchdog(DEFAULT_STATE_TIMEOUT) if argv is None else None  # until the config
    if watchdog is not None:
        watchdog.start()
    previous = _take_termination()
    try:
        return _run(argv, watchdog)
    except Terminated as exc:  # one landing outside the command, as its error is reported
        return _interrupted(exc)
    finally:
        _give_back(previous)
        if watchdog is not None:
            watchdog.stop()


def _unpassable(argv: list[str]) -> str | None:
    """What is wrong with an argument no command line can hold (a NUL, a lone surrogate),
    which only a caller in this process can pass: every path and name would refuse it,
    but the file system calls raised ValueError or UnicodeEncodeError first."""
    for arg in argv:
        try:
            if b"\x00" not in os.fsencode(arg):
                continue
        except UnicodeEncodeError:
            pass
        return f"argument {shown(arg, 60, escaped=True)} is text no command line can hold"
    return None


def _run(argv: list[str] | None, watchdog: Watchdog | None) -> int:
    command = _with_help_context(typer.main.get_command(app))
    try:
        command.main(args=argv, prog_name="shardvault", standalone_mode=True, obj=watchdog)
    except ShardvaultError as exc:
        _error(str(exc))
        return exc.exit_code
    except SystemExit as exc:
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:
            return _interrupted(interrupt)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except OSError as exc:  # a path the user gave that cannot be used, or a failing disk
        interrupt = _interrupt_behind(exc)  # a hung-up terminal fails the next write (EIO)
        if interrupt is not None:
            return _interrupted(interrupt)
        where = f": {named(str(exc.filename))}" if exc.filename is not None else ""
        more = why_too_long(exc)
        _error(f"{exc.strerror or exc}{where}{'' if more is None else ': ' + more}")
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C raises KeyboardInterrupt,
    so that what Ctrl-C cleans up (a `get -o` temporary, a put's shards) is cleaned
    up for them too: `timeout` or a closed terminal left a partial file behind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_Handlers = dict[int, Callable[[int, FrameType | None], Any] | int | None]


def _terminating_in(owner: int) -> Callable[[int, FrameType | None], None]:
    """The handler for process OWNER; a child forked with it (scan's workers) dies of the
    signal as by default, rather than unwinding the parent's code."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    return terminate


def _take_termination() -> _Handlers:
    """Handle SIGTERM and SIGHUP as Ctrl-C, returning the handlers replaced. Left alone:
    an ignored signal (`nohup`), and a thread but the main one (which cannot)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: _Handlers = {}
    terminate = _terminating_in(os.getpid())
    for signum in _TERMINATING:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, terminate)
    return previous


def _give_back(previous: _Handlers) -> None:
    """Restore the handlers main() replaced: it may run many times in one process."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """Typer turns Ctrl-C into a silent exit 130; the KeyboardInterrupt is in the chain."""
    visited: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in visited:
        if isinstance(link, KeyboardInterrupt):
            return link
        visited.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _interrupted(interrupt: KeyboardInterrupt) -> int:
    """Ctrl-C: exit 130; a SIGTERM or SIGHUP: 128 plus its number, as a shell reports it."""
    if isinstance(interrupt, Terminated):
        _error("terminated")
        return 128 + interrupt.signum
    _error("interrupted")
    return 130


def _error(message: str) -> None:
    """One line on stderr; with stderr closed, none (print would fall back to stdout,
    mixing an error into the data a script reads): the exit code still says it."""
    if sys.stderr is not None:
        with suppress(OSError):  # a terminal that hung up: the exit code still says it
            print(f"error: {one_line(message)}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
