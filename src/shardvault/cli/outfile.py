"""Where `get -o FILE` writes, and how: as a shell redirection would, but atomically.

A regular file is written to a temporary beside it and renamed over it, so a
failed read leaves it untouched; the temporary is private until it has the
file's owner and mode. A device, a FIFO or an open descriptor (`/dev/stdout`,
`/dev/fd/N`, or the file stdout already writes) is written into, never
replaced. What a redirection would refuse is refused before anything is read
(and audited): a directory, a loop of symlinks, a missing directory, a file or
directory this user may not write, a file of another user (replacing it would
give it to this one).

The path is resolved once, when it is checked, and its directory held open
(`O_PATH`) from then on, and so is a device or FIFO it leads to: the write goes
to what was checked. A file is replaced by name within that directory, so a
symlink swapped in meanwhile is replaced, not followed, and a FIFO swapped in
is not fed. Otherwise a symlink put into a directory another user may write,
between the check and the write, would have sent the object to wherever it
points (a deployment file included), and a FIFO to whoever reads it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from shardvault.durability import write_failure, write_refused
from shardvault.errors import Conflict, InvalidInput, ShardvaultError
from shardvault.model import named

_DESCRIPTOR = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)")
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}


@dataclass(eq=False)
class Output:
    """A checked `-o`: the path as given (for messages), what it led to when checked,
    and the way back to it: an open descriptor written into, or the target's directory
    and the device or FIFO the target is, open until `write_output` is done with them."""

    given: Path
    target: Path
    found: os.stat_result | None  # none: the write makes the file
    descriptor: int | None = None  # the caller's: never closed here
    directory: int | None = None
    pinned: int | None = None  # the device or FIFO, O_PATH

    def close(self) -> None:
        for fd in (self.directory, self.pinned):
            if fd is not None:
                os.close(fd)
        self.directory = self.pinned = None


def checked_output(given: str, option: str = "-o") -> Output:
    """`OPTION GIVEN`, once it is known that the object could be written there."""
    if not given:
        raise InvalidInput(f"{option} is empty; give a file name")
    path = Path(given)
    if given.endswith("/") or not path.name or path.is_dir():
        raise InvalidInput(f"{option} {named(given)} is a directory; give a file name")
    descriptor = _descriptor(path)
    if descriptor is not None:
        try:
            status = os.fstat(descriptor)
        except OSError as exc:
            raise _refused(path, exc.errno) from None
        return Output(path, Path(os.path.realpath(path)), status, descriptor=descriptor)
    target = _target(path)
    output = Output(path, target, None, directory=_open_directory(path, target.parent))
    try:
        output.found = found = _stat_in(output)
        if found is not None and stat.S_ISLNK(found.st_mode):  # resolved, then swapped in
            raise Conflict(f"{path} changed while it was checked; try again")
        if found is None or stat.S_ISREG(found.st_mode):
            _check_directory(path, target.parent)
            _check_new_file(output)
        if found is not None and stat.S_ISREG(found.st_mode):
            _check_file(output, found)
        elif found is not None:
            output.pinned = _pin(output, found)
    except BaseException:
        output.close()
        raise
    return output


def write_output(output: Output, chunks: Iterable[bytes], advance: Callable[[int], None]) -> None:
    """Write the chunks as `checked_output` found the path, then let it go: into the
    descriptor, device or FIFO that was checked, else by a rename over whatever has
    the name now."""
    try:
        if output.descriptor is not None:
            _write_into(output.given, os.dup(output.descriptor), chunks, advance)
        elif output.pinned is not None:
            try:
                fd = os.open(f"/proc/self/fd/{output.pinned}", os.O_WRONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise write_failure(str(output.given), exc) from None
            _write_into(output.given, fd, chunks, advance)
        else:
            _replace(output, chunks, advance, output.found)
    finally:
        output.close()


def output_target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file PATH leads to, resolved, and its status (none if a write would make it);
    an open descriptor's is the descriptor's."""
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


def _open_directory(path: Path, directory: Path) -> int:
    """DIRECTORY held open (`O_PATH`: no read permission needed, as a redirection needs
    none), refused if it is not what the path led to a moment before."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refused(path, exc.errno) from None
    try:
        opened, named_now = os.fstat(fd), os.stat(directory)
    except OSError:
        named_now = None
    if named_now is None or (opened.st_dev, opened.st_ino) != (named_now.st_dev, named_now.st_ino):
        os.close(fd)
        raise Conflict(f"{path} changed while it was checked; try again")
    return fd


def _stat_in(output: Output) -> os.stat_result | None:
    """The target's status by name in its open directory, not following a symlink."""
    try:
        return os.stat(output.target.name, dir_fd=output.directory, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refused(output.given, exc.errno) from None


def _check_directory(path: Path, directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        raise _refused(
            path, errno.EROFS if read_only else errno.EACCES, f"its directory {directory}"
        )


def _check_new_file(output: Output) -> None:
    """That the directory takes the temporary the rename needs, made and removed at once:
    `access` says yes to root, and /proc, sysfs or a FUSE mount may still make no file
    (/proc says ENOENT, which would read as the path's own fault)."""
    temp = _temporary(output)
    try:
        fd = _make_temporary(output, temp, 0o600)
    except FileNotFoundError:
        raise InvalidInput(
            f"cannot write {named(str(output.given))}: its directory {output.target.parent} "
            "takes no new file, and -o writes one beside it to rename over it (redirect "
            "stdout to write into the file)"
        ) from None
    except OSError as exc:
        raise _refused(output.given, exc.errno, f"its directory {output.target.parent}") from None
    try:
        os.close(fd)
    finally:
        os.unlink(temp, dir_fd=output.directory)


def _temporary(output: Output) -> str:
    """The name of the temporary written beside the target, then renamed over it: the
    name's first 200 bytes (not characters: 200 of "é" are 400), so that any name the
    file system takes (255 bytes) leaves room for the suffix."""
    head = os.fsdecode(os.fsencode(output.target.name)[:200])  # a cut character: escaped
    return f".{head}.partial-{os.getpid()}"


def _make_temporary(output: Output, temp: str, mode: int) -> int:
    """TEMP made (never one there before), or removed again if a signal lands as the
    open returns: Ctrl-C, or SIGTERM raised as it, then left a `.partial` behind."""
    try:
        return _open_in(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, temp)
    except OSError:
        raise  # nothing was made
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=output.directory)
        raise


def _check_file(output: Output, found: os.stat_result) -> None:
    try:  # no O_TRUNC: nothing changes; the errno is the kernel's (EACCES, EROFS, ETXTBSY)
        os.close(_open_in(output, os.O_WRONLY))
    except OSError as exc:
        raise _refused(output.given, exc.errno) from None
    if os.geteuid() not in (0, found.st_uid):
        raise InvalidInput(
            f"cannot write {named(str(output.given))}: it belongs to another user, and -o "
            "replaces a file (redirect stdout to write into it)"
        )


def _open_in(output: Output, flags: int, mode: int = 0o777, name: str | None = None) -> int:
    """Open NAME (the target's, by default) in the target's open directory, never
    following a symlink there."""
    return os.open(
        name or output.target.name,
        flags | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=output.directory,
    )


def _pin(output: Output, found: os.stat_result) -> int:
    """The device or FIFO the target is, held (`O_PATH`: opening it to write could block
    or act) so that the write goes to it and no other; refused if it just changed."""
    try:
        fd = _open_in(output, os.O_PATH)  # O_NOFOLLOW with O_PATH: a symlink, not its target
    except OSError as exc:
        raise _refused(output.given, exc.errno) from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, opened.st_mode) != (
        found.st_dev,
        found.st_ino,
        found.st_mode,
    ):
        os.close(fd)
        raise Conflict(f"{output.given} changed while it was checked; try again")
    return fd


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
    output: Output,
    chunks: Iterable[bytes],
    advance: Callable[[int], None],
    found: os.stat_result | None,
) -> None:
    """Write a temporary beside the target, then rename it over the target. Replacing a
    file, the temporary is made 0600 and gets the file's owner, group (or, where this
    user may not give it that group, no group permissions) and mode before any data."""
    name = output.target.name
    temp = _temporary(output)
    directory = output.directory
    try:
        fd = _make_temporary(output, temp, 0o600 if found else 0o666)
    except OSError as exc:
        raise write_failure(str(output.given), exc) from None
    try:  # entered as the open returns: no signal is taken in between
        with os.fdopen(fd, "wb") as sink:
            if found is not None:
                _take_over(sink.fileno(), found)
            for chunk in chunks:
                sink.write(chunk)
                advance(len(chunk))
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException as exc:
        with suppress(OSError):  # the original error is the one to report
            os.unlink(temp, dir_fd=directory)
        if isinstance(exc, OSError):
            raise write_failure(str(output.given), exc) from None
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
