"""Walking a source tree: which files to scan, honouring .gitignore and skipping vendored code.

Every ``.gitignore`` in the tree applies below its own folder, as in git, with the
deepest decisive pattern winning. Symlinks are not followed unless asked; when they
are, a directory already on the current path is a loop, reported and not entered.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pathspec

from shardvault.durability import read_bounded
from shardvault.errors import InvalidInput
from shardvault.scan.findings import SkippedFile, SkipReason
from shardvault.scan.languages import Language, language_for

#: Folders holding other people's code or build output; skipped unless asked.
VENDORED_DIRS = frozenset(
    {
        "node_modules",
        "bower_components",
        "vendor",
        "third_party",
        "third-party",
        "thirdparty",
        "Pods",
        "Carthage",
        ".dart_tool",
        ".pub-cache",
        ".gradle",
        ".venv",
        "venv",
        "site-packages",
        "__pycache__",
    }
)
_VCS_DIRS = frozenset({".git", ".hg", ".svn"})


@dataclass(frozen=True)
class SourceFile:
    """A file to scan: its path relative to the root (POSIX), absolute path and language."""

    rel: str
    path: str
    language: Language


@dataclass(frozen=True)
class WalkOptions:
    include_vendored: bool = False
    use_gitignore: bool = True
    follow_symlinks: bool = False


@dataclass
class _Ignore:
    base: str
    spec: pathspec.GitIgnoreSpec


def walk_tree(root: Path, options: WalkOptions) -> Iterator[SourceFile | SkippedFile]:
    """Yield every scannable file under ``root`` (a file root yields itself) and every skip."""
    if root.is_file():
        language = language_for(root.name)
        if language is not None:
            yield SourceFile(root.name, str(root), language)
        return
    real = os.path.realpath(root)
    yield from _walk_dir(str(root), "", [], options, {_inode(real)})


def _walk_dir(
    path: str,
    rel: str,
    ignores: list[_Ignore],
    options: WalkOptions,
    ancestors: set[tuple[int, int]],
) -> Iterator[SourceFile | SkippedFile]:
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield SkippedFile(rel or ".", SkipReason.UNREADABLE, _why(exc))
        return
    if options.use_gitignore and any(e.name == ".gitignore" for e in entries):
        spec = _read_gitignore(os.path.join(path, ".gitignore"))
        if spec is not None:
            ignores = [*ignores, _Ignore(rel, spec)]
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=options.follow_symlinks)
            is_file = not is_dir and entry.is_file(follow_symlinks=options.follow_symlinks)
        except OSError as exc:
            yield SkippedFile(child, SkipReason.UNREADABLE, _why(exc))
            continue
        if is_link and not options.follow_symlinks:
            if language_for(entry.name) is not None or _points_to_dir(entry.path):
                yield SkippedFile(child, SkipReason.SYMLINK, "symbolic link not followed")
            continue
        if is_dir:
            if entry.name in _VCS_DIRS or (
                entry.name in VENDORED_DIRS and not options.include_vendored
            ):
                continue
            if _ignored(child, True, ignores):
                continue
            yield from _enter(entry, child, ignores, options, ancestors)
        elif is_file:
            language = language_for(entry.name)
            if language is not None and not _ignored(child, False, ignores):
                yield SourceFile(child, entry.path, language)
        elif is_link:
            yield SkippedFile(child, SkipReason.UNREADABLE, "broken symbolic link")


def _enter(
    entry: os.DirEntry[str],
    rel: str,
    ignores: list[_Ignore],
    options: WalkOptions,
    ancestors: set[tuple[int, int]],
) -> Iterator[SourceFile | SkippedFile]:
    try:
        key = _inode(entry.path)
    except OSError as exc:
        yield SkippedFile(rel, SkipReason.UNREADABLE, _why(exc))
        return
    if key in ancestors:
        yield SkippedFile(rel, SkipReason.SYMLINK_LOOP, "directory link points back up the tree")
        return
    yield from _walk_dir(entry.path, rel, ignores, options, ancestors | {key})


def _inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _points_to_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return True  # dangling or looping: worth reporting


def _read_gitignore(path: str) -> pathspec.GitIgnoreSpec | None:
    try:
        text = read_bounded(path).decode("utf-8", errors="replace")
    except (OSError, InvalidInput):  # a FIFO, whose open would wait for a writer, too
        return None  # an unreadable .gitignore ignores nothing, like git
    return pathspec.GitIgnoreSpec.from_lines(text.splitlines())


def _ignored(rel: str, is_dir: bool, ignores: list[_Ignore]) -> bool:
    """Deepest .gitignore with a matching pattern decides, as git does."""
    verdict = False
    for ignore in ignores:
        sub = rel[len(ignore.base) + 1 :] if ignore.base else rel
        result = ignore.spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            verdict = result.include
    return verdict


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
