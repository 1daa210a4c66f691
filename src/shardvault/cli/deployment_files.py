"""Keep `get -o FILE` out of the deployment's own files, refused before anything is read.

`-o keys/keyring.json` replaced the keyring with the object's bytes: every later
command failed and all data became unreadable; so did a catalog, the directory,
the tombstones, the config, an audit log or a node's directory. The deployment
owns its config file, its access and custodian policies, the keyring and every
file beside it named after it (its lock, temporaries, tombstones, key subjects
and their SQLite journals), and three kinds of tree: the state directory (catalogs, directory,
audit logs, approvals, principals), the partner directory and each local node's
directory. `-o` is compared resolved, its symlinks followed as `open` follows
them (`outfile.output_target`).

Hard links, what is cheap: an existing file with more than one name, or an open
descriptor (`/dev/fd/N`, which is written into), is also compared by
(st_dev, st_ino) with the config, the policies, the keyring's files, the partner
directory's and every file under the state directory (a few per cell), statted
only then. Node directories are not walked (they hold every shard: too many to
stat at each get). A file `-o` names is replaced by a rename, so a hard link
into a node directory loses its name, never the shard's bytes; but an open
descriptor is written into, so one open on a file with several names, on the
disk of a node's directory, is refused: it could be a shard's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from shardvault.cli.outfile import Output, checked_output, output_target
from shardvault.config import Config, node_directory
from shardvault.errors import InvalidInput
from shardvault.keys.key_subjects import key_subjects_path
from shardvault.keys.tombstones import tombstones_path
from shardvault.model import named


def output_outside(
    given: str | None, config: Config, option: str = "-o", written: str = "the object"
) -> Output | None:
    """`OPTION GIVEN` (none if not given), checked as `get -o` checks one and kept out of
    the deployment's files, before anything is read or done."""
    if given is None:
        return None
    output = checked_output(given, option)
    try:
        into = output.descriptor is not None
        _refuse(output.given, output.target, output.found, config, option, written, into)
    except BaseException:
        output.close()
        raise
    return output


def refuse_deployment_file(
    path: Path, config: Config, option: str = "-o", written: str = "the object"
) -> None:
    """Raise `InvalidInput` (exit 2) if writing PATH could change a file of the deployment."""
    _refuse(path, *output_target(path), config, option, written)


def _refuse(
    path: Path,
    target: Path,
    found: os.stat_result | None,
    config: Config,
    option: str,
    written: str,
    into: bool = False,
) -> None:
    """Refuse TARGET if it is a deployment file (or INTO, written into: may be a shard)."""
    what = _owner(target, config)
    if what is None and found is not None and stat.S_ISREG(found.st_mode) and found.st_nlink > 1:
        what = _same_file(found, config) or (_maybe_a_shard(found, config) if into else None)
    if what is not None:
        raise InvalidInput(
            f"{option} {named(str(path))} is {what}: write {written} outside the deployment's files"
        )


def _maybe_a_shard(found: os.stat_result, config: Config) -> str | None:
    """What a descriptor open on FOUND may be: a shard, if it has several names on the
    disk of a node's directory (see the module's note)."""
    for node in config.nodes:
        with suppress(OSError):
            if node.backend == "local" and os.stat(node.location).st_dev == found.st_dev:
                return (
                    f"open on a file with other names on the disk of node {node.id}'s "
                    "directory, perhaps a shard, and would be written into"
                )
    return None


def _owner(target: Path, config: Config) -> str | None:
    """What of the deployment TARGET is, or is inside; none if it is no part of it."""
    for file, what in _files(config):
        if target == file:
            return what
    keyring = _real(config.keyring_path)
    if target.parent == keyring.parent and _keyring_named(target.name, keyring):
        return f"a file of the deployment's keyring {keyring}"
    for tree, what in _trees(config):
        if target.is_relative_to(tree):
            return f"inside {what} {tree}"
    return None


def _files(config: Config) -> Iterator[tuple[Path, str]]:
    yield _real(config.path), "the deployment's config file"
    yield _real(config.keyring_path), "the deployment's keyring"
    if config.governance is not None:
        yield _real(config.governance.policy_path), "the deployment's access policy"
        yield _real(config.governance.custodian_policy_path), "the custodian's policy"


def _keyring_named(name: str, keyring: Path) -> bool:
    """Whether a file beside the keyring is one of its own, named exactly as the keyring
    names them: `keyring.json.lock`, a `.keyring.json.*.tmp`, `keyring.destroyed.sqlite`,
    `keyring.subjects.sqlite` and their `-wal`, `-shm` and `-journal` (not
    `keyring.json.bak`: the user's)."""
    databases = (tombstones_path(keyring).name, key_subjects_path(keyring).name)
    return (
        name in (keyring.name, f"{keyring.name}.lock")
        or (name.startswith(f".{keyring.name}.") and name.endswith(".tmp"))
        or any(name in (db, f"{db}-wal", f"{db}-shm", f"{db}-journal") for db in databases)
    )


def _trees(config: Config) -> Iterator[tuple[Path, str]]:
    yield _real(config.state_dir), "the deployment's state directory"
    if config.governance is not None:
        yield _real(config.governance.partner_dir), "the partner directory"
    for node in config.nodes:
        if node.backend == "local":
            yield node_directory(Path(node.location)), f"node {node.id}'s directory"


def _same_file(found: os.stat_result, config: Config) -> str | None:
    """The deployment's file FOUND is another name of, if any (see the module's note)."""
    identity = (found.st_dev, found.st_ino)
    for file in _linkable(config):
        try:
            info = file.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == identity:
            return f"a hard link to the deployment's file {file}"
    return None


def _linkable(config: Config) -> Iterator[Path]:
    """The files of the deployment but the shards."""
    yield from (file for file, _ in _files(config))
    keyring = _real(config.keyring_path)
    with suppress(OSError):
        yield from (p for p in keyring.parent.iterdir() if _keyring_named(p.name, keyring))
    trees = [config.state_dir]
    if config.governance is not None:
        trees.append(config.governance.partner_dir)
    for tree in trees:
        for directory, _dirs, names in os.walk(_real(tree)):
            yield from (Path(directory, name) for name in names)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
