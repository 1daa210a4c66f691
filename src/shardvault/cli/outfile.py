"""Where `get -o FILE` writes, and how: as a shell redirection would, but atomically.

A regular file is written to a temporary beside it and renamed over it, so a
failed read leaves it untouched; the temporary is private until it has the
file's owner and mode. A device, a FIFO or an open descriptor (`/dev/stdout`,
`/dev/fd/N`, or the file stdout already writes) is written into, never
replaced. What a redirection would refuse is refused before anything is read
(and audited): a directory, a loop of symlinks, a missing directory, a file or
directory this user may not write, a file of another user (replacing it would
give it to this one).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

from shardvault.durability import write_failure, write_refused
from shardvault.errors import InvalidInput, ShardvaultError
from shardvault.model import named

_DESCRIPTOR = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)")
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}


def checked_output(given: str) -> Path:
    """The path of `-o GIVEN`, once it is known that the object could be written there."""
    if not given:
        raise InvalidInput("-o is empty; give a file name")
    path = Path(given)
    if given.endswith("/") or not path.name or path.is_dir():
        raise InvalidInput(f"-o {named(given)} is a directory; give a file name")
    descriptor = _descriptor(path)
    if descriptor is not None:
        try:
            os.fstat(descriptor)
        except OSError as exc:
            raise _refused(path, exc.errno) from None
        return path
    target = _target(path)
    try:
        found = target.stat()
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise _refused(path, exc.errno) from None
    if found is None or stat.S_ISREG(found.st_mode):
        _check_directory(path, target.parent)
    if found is not None and stat.S_ISREG(found.st_mode):
        _check_file(path, target, found)
    return path


def write_output(path: Path, chunks: Iterable[bytes], advance: Callable[[int], None]) -> None:
    """Write the chunks to a path `checked_output` returned."""
    descriptor = _descriptor(path)
    if descriptor is not None:
        _write_into(path, os.dup(descriptor), chunks, advance)
        return
    target = _target(path)
    try:
        found: os.stat_result | None = target.stat()
    except OSError:
        found = None  # absent: made by the write, errors reported there
    if found is not None and not stat.S_ISREG(found.st_mode):
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)  # never created: no O_CREAT
        except OSError as exc:
            raise write_failure(str(path), exc) from None
        _write_into(path, fd, chunks, advance)
    else:
        _replace(path, target, chunks, advance, found)


def output_target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file a path `checked_output` returned leads to, resolved, and its status (none
    if the write is to make it); an open descriptor's is the descriptor's."""
    descriptor = _descriptor(path)
    if descriptor is not None:
        return Path(os.path.realpath(path)), os.fstat(descriptor)
    target = _target(path)
    try:
        return target, target.stat()
    except OSError:
        return target, None


def _descriptor(path: Path) -> int | None:
    """The open descriptor PATH names, or 1 if PATH is the file stdout writes."""
    text = str(path)
    if text in _STANDARD:
        return _STANDARD[text]
    if match := _DESCRIPTOR.fullmatch(text):
        return int(match.group(1))
    try:
        written, named = os.fstat(1), os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(named.st_mode) and (written.st_dev, written.st_ino) == (
        named.st_dev,
        named.st_ino,
    ):
        return 1
    return None


def _target(path: Path) -> Path:
    """The file PATH leads to through its symlinks, followed as `open` follows them (a
    link's '..' after the directories it names), and made if the last one dangles."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        pass
    except OSError as exc:  # a loop of symlinks
        raise write_failure(str(path), exc) from None
    current = os.path.abspath(path)
    for _ in range(40):
        if not os.path.islink(current):
            break
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    else:
        raise _refused(path, errno.ELOOP)
    parent = os.path.dirname(current)
    if not os.path.isdir(parent):  # the kernel's answer for "missing/..", not the text's
        raise _refused(path, errno.ENOENT)
    return Path(os.path.realpath(parent)) / os.path.basename(current)


def _check_directory(path: Path, directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        raise _refused(
            path, errno.EROFS if read_only else errno.EACCES, f"its directory {directory}"
        )


def _check_file(path: Path, target: Path, found: os.stat_result) -> None:
    try:  # no O_TRUNC: nothing changes; the errno is the kernel's (EACCES, EROFS, ETXTBSY)
        os.close(os.open(target, os.O_WRONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise _refused(path, exc.errno) from None
    if os.geteuid() not in (0, found.st_uid):
        raise InvalidInput(
            f"cannot write {named(str(path))}: it belongs to another user, and -o replaces "
            "a file (redirect stdout to write into it)"
        )


def _refused(path: Path, code: int | None, what: str = "") -> ShardvaultError:
    """What writing PATH would have met (errno CODE), said before anything is read."""
    return write_refused(f"{path} ({what})" if what else str(path), code)


def _write_into(
    path: Path, fd: int, chunks: Iterable[bytes], advance: Callable[[int], None]
) -> None:
    try:
        with os.fdopen(fd, "wb") as sink:
            for chunk in chunks:
                sink.write(chunk)
                advance(len(chunk))
    except OSError as exc:
        raise write_failure(str(path), exc) from None


def _replace(
    path: Path,
    target: Path,
    chunks: Iterable[bytes],
    advance: Callable[[int], None],
    found: os.stat_result | None,
) -> None:
    """Write a temporary beside TARGET, then rename it over TARGET. Replacing a file, the
    temporary is made 0600 and gets the file's owner, group (or, where this user may
    not give it that group, no group permissions) and mode before any data."""
    temp = target.with_name(f".{target.name[:200]}.partial-{os.getpid()}")
    created = False
    try:
        fd = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600 if found else 0o666
        )
        created = True
        with os.fdopen(fd, "wb") as sink:
            if found is not None:
                _take_over(sink.fileno(), found)
            for chunk in chunks:
                sink.write(chunk)
                advance(len(chunk))
        temp.replace(target)
    except BaseException as exc:
        if created:
            with suppress(OSError):  # the original error is the one to report
                temp.unlink()
        if isinstance(exc, OSError):
            raise write_failure(str(path), exc) from None
        raise


def _take_over(fd: int, found: os.stat_result) -> None:
    """Give the temporary FOUND's owner and group where allowed, then its mode (after
    the chown, which would clear set-id bits)."""
    mode = stat.S_IMODE(found.st_mode)
    try:
        os.fchown(fd, found.st_uid, found.st_gid)
    except PermissionError:  # not root: the owner is this user (checked), the group may fail
        try:
            os.fchown(fd, -1, found.st_gid)
        except PermissionError:
            mode &= ~0o070  # another group's members must not read it through this one's
    os.fchmod(fd, mode)
