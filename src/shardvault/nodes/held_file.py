"""Whether a file held open is still the one at its name.

A writer appending to a file that was removed, moved or replaced (a restore) under
it writes where no other process, nor this one restarted, will read: a pack's
writer asks this once per sync (nodes/packs.py), so it must be cheap. Linux names
the file a descriptor holds under /proc/self/fd, its path as of now, or with
" (deleted)" once unlinked: one readlink, no stat result to build (a third of the
instructions). Without /proc (or once it cannot be read) the path is stat'ed and
its inode compared. The link is read once when the file is held, and the path
stat'ed after it: a file gone from its name before that read has a link naming it
gone, which every later look would match. A look that must not wait for the disk
(`linked_at_its_name`: a pack let go as its store closes) reads the link alone.

The writer looks without its lock, so a look may run while another thread lets
the file go and closes its descriptor, whose number the next open takes, perhaps
for the same path (a pack restored there): the writer lets go first (`let_go`),
and a look that read a reused number finds that said once it has read.
"""

from __future__ import annotations

import os

FD_LINKS = "/proc/self/fd"


class HeldFile:
    """An open file and the name it was opened at."""

    def __init__(self, fd: int, path: str, fd_links: str | None = None) -> None:
        """``fd_links``: where the descriptors' links are (`FD_LINKS`, as of the call)."""
        self._path = path
        self._fd_link = f"{FD_LINKS if fd_links is None else fd_links}/{fd}"
        try:
            self._link: str | None = os.readlink(self._fd_link)  # symbolic links resolved
        except OSError:
            self._link = None
        made = os.fstat(fd)
        self._id = (made.st_dev, made.st_ino)
        # gone from its name before the readlink: the link names it removed (or where it
        # went), and every later one would match it, so its name is looked at once after
        try:
            self._let_go = not self._at_path()
        except OSError:
            self._let_go = True

    def let_go(self) -> None:
        """Say the descriptor is about to be closed: from now on the file is not taken
        for at its name, whatever file the number (or the path) names next."""
        self._let_go = True

    def at_its_name(self) -> bool:
        """Whether the file is still linked at its path (not removed, moved or replaced),
        and not let go. The flag is read after the look: set before the close, it is
        seen by every look that may have read the number once it named another file."""
        if self._link is not None:
            try:
                at_name = os.readlink(self._fd_link) == self._link
            except OSError:
                if self._let_go:  # closed meanwhile
                    return False
                # /proc unreadable since (unmounted, its access denied): the look made
                # without it, which fails only if the name cannot be stat'ed either
                at_name = self._at_path()
        else:
            at_name = self._at_path()
        return at_name and not self._let_go

    def linked_at_its_name(self) -> bool | None:
        """`at_its_name` as /proc says it: a readlink, which never waits for the file's
        disk. None where /proc cannot say, and only a stat of the path could, which a
        hung disk holds for as long as it hangs (a hard-mounted share's, say)."""
        if self._link is None:
            return None
        try:
            at_name = os.readlink(self._fd_link) == self._link
        except OSError:
            return False if self._let_go else None
        return at_name and not self._let_go

    def _at_path(self) -> bool:
        """Whether the path names this file now (a stat, not the descriptor's link)."""
        try:
            found = os.stat(self._path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return (found.st_dev, found.st_ino) == self._id
