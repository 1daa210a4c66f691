"""`shardvault init --demo DIR`: a three-cell deployment on one machine.

Besides the deployment file it writes the operator's access policy
(``policy.toml``), in the partner's directory the custodian's own policy
(``partner/custodian-policy.toml``), and a key pair per demo approver, two of
each tenant (an approver signs only its own tenant's approvals): the private key
in ``approvers/<id>.skey`` (0600, outside ``partner/``: each approver holds
their own), the public key in the custodian's policy, so the governed vault
works out of the box, for either tenant.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardvault.custodian_policy import public_key_text
from shardvault.durability import create_whole, write_failure
from shardvault.errors import InvalidInput
from shardvault.file_locks import release_flock
from shardvault.governance.approval_signatures import signing_key_pem

DEMO_JURISDICTIONS = {"US": "United States", "SG": "Singapore", "EU": "European Union"}
DEMO_TENANTS = {"intl": "International social app", "domestic": "Domestic social app"}
DEMO_APPROVERS = {
    "intl": ("dpo", "partner-officer"),
    "domestic": ("domestic-dpo", "domestic-officer"),
}
"""Each tenant's approvers, an operator officer and a partner officer: approvers of
one tenant only could never approve a forget of the other's users."""
DEMO_QUORUM = 2
NODES_PER_CELL = 6

DEMO_POLICY = """\
# The operator's access policy (docs/policy.md). The invariants (tenant
# isolation, residency of protected data, refusal of foreign governments,
# approval for forget and move) hold whatever this file says.
version = 1

[[rule]]
id = "embedded-local-admin"
effect = "allow"
description = "the embedded deployment's administrator runs the demo on this machine"
actions = ["*"]
principals = ["local-admin"]

[[rule]]
id = "service-serves-users"
effect = "allow"
description = "the app's backend reads and writes its users' data to serve them"
actions = ["read", "write", "delete", "list", "stat"]
principal_kinds = ["service"]
purposes = ["serve-user"]

[[rule]]
id = "support-reads-with-ticket"
effect = "allow"
description = "support staff may look at a user's data while handling their ticket"
actions = ["read", "list", "stat"]
principal_kinds = ["employee"]
roles = ["support"]
purposes = ["support-ticket"]

[[rule]]
id = "privacy-team-forgets"
effect = "allow"
actions = ["forget"]
principal_kinds = ["employee"]
roles = ["privacy"]
purposes = ["user-request"]

[[rule]]
id = "lawful-request-reviewed"
effect = "approval-required"
description = "a domestic authority's request is reviewed before anything is released"
actions = ["read", "list", "stat"]
principal_kinds = ["external-requester"]
purposes = ["lawful-request"]

[[rule]]
id = "auditor-audits"
effect = "allow"
actions = ["audit", "list", "stat"]
principal_kinds = ["partner-auditor"]
purposes = ["audit"]
"""

DEMO_CUSTODIAN_POLICY = """\
# The key custodian's own policy, held by the partner (docs/policy.md,
# "Custodian policy"). It decides every wrap (a user registered), unwrap (a
# read or write) and destroy (a forget) again, whatever the operator's policy
# said. Support tickets are deliberately not granted: the partner does not let
# support staff read user data, even where the operator would. Nothing
# destroys a key without an approval two of its tenant's approvers signed.
version = 1
approval_purposes = ["lawful-request", "user-request"]

[[grant]]
id = "serve-users"
purposes = ["serve-user"]
operations = ["wrap", "unwrap"]

[[grant]]
id = "embedded-local-admin"
purposes = ["operations", "write", "read"]
principals = ["local-admin"]
operations = ["unwrap"]

[[grant]]
id = "register-subjects"
purposes = ["register-subject"]
principals = ["local-admin"]
operations = ["wrap"]

[[grant]]
id = "forget-subjects"
purposes = ["forget-subject", "user-request"]
operations = ["destroy"]
requires_approval = true

[[grant]]
id = "lawful-requests"
purposes = ["lawful-request"]
operations = ["unwrap"]
requires_approval = true
"""
FACILITIES_PER_CELL = 3


def demo_custodian_policy(approvers: dict[str, Ed25519PrivateKey]) -> str:
    """The demo's custodian policy, naming each approver's public key: the partner, not
    the operator's config, says whose signatures on an approval count, and how many."""
    purposes = 'approval_purposes = ["lawful-request", "user-request"]\n'
    quorum = f"approval_quorum = {DEMO_QUORUM}  # signatures of [approvers] an approval needs\n"
    lines = [
        "",
        "# Whose signatures on an approval the custodian counts: each approver signs with",
        "# the private key only they hold (approvers/<id>.skey in the demo); two of",
        "# each tenant, as the operator lets an approver sign only its own tenant's.",
        "[approvers]",
        *(f'{ident} = "{public_key_text(key.public_key())}"' for ident, key in approvers.items()),
        "",
        "# And whose approvals each one's signature counts for: its own tenant's only, as",
        "# the operator has them sign; so two approvers of one tenant meet no other's.",
        "[approver_tenants]",
        *(
            f'{ident} = ["{tenant}"]'
            for tenant, idents in DEMO_APPROVERS.items()
            for ident in idents
        ),
    ]
    return DEMO_CUSTODIAN_POLICY.replace(purposes, purposes + quorum, 1) + "\n".join(lines) + "\n"


def _all_approvers() -> tuple[str, ...]:
    return tuple(ident for idents in DEMO_APPROVERS.values() for ident in idents)


def demo_config_text() -> str:
    lines = [
        "# shardvault demo deployment: three cells, six local-directory nodes each.",
        "version = 1",
        "",
        "[storage]",
        'state_dir = "state"',
        "segment_size = 1048576",
        "k = 4",
        "m = 2",
        "",
        "[custodian]",
        'backend = "keyring"',
        'path = "keys/keyring.json"',
        "",
        "[governance]",
        'policy = "policy.toml"',
        'partner_dir = "partner"',
        'custodian_policy = "partner/custodian-policy.toml"',
        'origin_prefix = "demo.shardvault.local"',
        'partner_name = "partner.demo.shardvault.local/witness"',
        'custodian_name = "partner.demo.shardvault.local/custodian"',
        "local_admin = true",
        f"approvers = {list(_all_approvers())!r}".replace("'", '"'),
        f"approval_quorum = {DEMO_QUORUM}",
        "approval_ttl = 86400",
        "",
    ]
    for code, name in DEMO_JURISDICTIONS.items():
        lines += [f"[jurisdictions.{code}]", f'name = "{name}"', ""]
    for tenant, name in DEMO_TENANTS.items():
        lines += [f"[tenants.{tenant}]", f'name = "{name}"', ""]
    for code in DEMO_JURISDICTIONS:
        for number in range(1, NODES_PER_CELL + 1):
            node = f"{code.lower()}-n{number}"
            facility = f"{code.lower()}-fac-{(number - 1) % FACILITIES_PER_CELL + 1}"
            lines += [
                "[[nodes]]",
                f'id = "{node}"',
                f'jurisdiction = "{code}"',
                f'facility = "{facility}"',
                'backend = "local"',
                f'path = "nodes/{code}/{node}"',
                "",
            ]
    return "\n".join(lines)


def write_demo(directory: Path) -> Path:
    """Write DIR/shardvault.toml, the two policies and the node directories.

    Refuses to overwrite any file it would write. On failure (a read-only
    path, a full disk) it removes what it made, so running it again works.
    """
    config_path = directory / "shardvault.toml"
    approvers = {ident: Ed25519PrivateKey.generate() for ident in _all_approvers()}
    keys = {directory / "approvers" / f"{ident}.skey": k for ident, k in approvers.items()}
    files = {
        directory / "policy.toml": DEMO_POLICY,
        directory / "partner" / "custodian-policy.toml": demo_custodian_policy(approvers),
        config_path: demo_config_text(),
    }
    _refuse_to_overwrite(directory, [*files, *keys])
    made: list[Path] = []
    try:
        with _alone_in(directory, made):
            _refuse_to_overwrite(directory, [*files, *keys])  # another init's, meanwhile
            for code in DEMO_JURISDICTIONS:
                for number in range(1, NODES_PER_CELL + 1):
                    _make_dirs(directory / "nodes" / code / f"{code.lower()}-n{number}", made)
            _make_dirs(directory / "partner", made, mode=0o700)
            _make_dirs(directory / "approvers", made, mode=0o700)
            for path, key in keys.items():
                _write_new(path, signing_key_pem(key), made, mode=0o600)
            for path, text in files.items():
                _write_new(path, text.encode(), made)
    except BaseException as exc:
        _remove(made)
        if isinstance(exc, OSError):
            why = OSError(exc.errno, _why_not_made(exc))
            raise write_failure(f"the demo deployment in {directory}", why) from None
        raise
    return config_path


@contextmanager
def _alone_in(directory: Path, made: list[Path]) -> Iterator[None]:
    """Hold DIRECTORY (made if missing) under an exclusive flock while the demo is
    written in it, removing what was MADE should that fail: of two inits at once, the
    second waits, then finds the first's files and refuses. Without it the init refused
    removed the directories it had made, which the other, finding them there, had
    taken for its own: the init that succeeded left a deployment with no node
    directories."""
    while True:
        _make_dirs(directory, made)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_at(fd, directory):  # not removed by an init that failed meanwhile
                break
        except BaseException:
            release_flock(fd)
            raise
        release_flock(fd)
    try:
        yield
    except BaseException:
        _remove(made)  # while still alone: no other init has taken what is removed
        made.clear()
        raise
    finally:
        release_flock(fd)


def _still_at(fd: int, directory: Path) -> bool:
    """Whether the directory open as FD is still the one at DIRECTORY."""
    try:
        there = os.stat(directory)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _refuse_to_overwrite(directory: Path, paths: list[Path]) -> None:
    """Refuse a file the demo would write, and what a deployment leaves beside its
    config: with the config and policies gone, a new demo reopened the old catalogs,
    keyring, shards and partner's keys under fresh policies."""
    if directory.exists() and not directory.is_dir():
        raise InvalidInput(f"{directory} exists and is not a directory: choose a directory")
    for path in paths:
        if path.exists() or path.is_symlink():
            raise InvalidInput(f"{path} already exists: choose an empty directory")
    for name in _DEPLOYMENT_DIRECTORIES:
        left = directory / name
        if left.is_dir() and (name not in _MAY_BE_EMPTY or any(left.iterdir())):
            raise InvalidInput(
                f"{left} is left from a deployment: choose an empty directory, or move it away"
            )


# the demo's state, keyring, node, partner and approvers' directories (`demo_config_text`)
_DEPLOYMENT_DIRECTORIES = ("state", "keys", "nodes", "partner", "approvers")
_MAY_BE_EMPTY = ("partner", "approvers")  # made beforehand, as a mount point or 0700


def _why_not_made(exc: OSError) -> str:
    """What stopped the demo creating the file or directory EXC names, in words: the
    errno alone misled (`/proc/x`: "No such file or directory", of a /proc that is
    there; a file in the way of a directory: "File exists")."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    path = Path(exc.filename)
    if exc.errno == errno.ENOENT and path.parent.is_dir():
        reason = f"{path.parent} takes no new files ({reason})"
    elif exc.errno == errno.ENOTDIR:
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = reason if blocking is None else f"{blocking} is not a directory"
    elif exc.errno == errno.EEXIST and path.is_symlink() and not path.exists():
        reason = f"it is a symbolic link to {os.readlink(path)}, which does not exist"
    elif exc.errno == errno.EEXIST and path.exists() and not path.is_dir():
        reason = "a file is in the way"
    return f"cannot create {path}: {reason}"


def _make_dirs(path: Path, made: list[Path], mode: int = 0o777) -> None:
    """mkdir -p, recording each directory it creates (parents first) for `_remove`."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for each in reversed(missing):
        try:
            each.mkdir(mode=mode if each == path else 0o777)
        except FileExistsError:
            if each.is_dir() and not each.is_symlink():
                continue  # another init made it meanwhile: its own, not removed on failure
            raise
        made.append(each)


def _write_new(path: Path, data: bytes, made: list[Path], mode: int = 0o666) -> None:
    """Write whole under a temporary of its own, then link it in: a crash leaves no
    half-written file, and no file made meanwhile is replaced. Not a fixed temporary
    name, opened as it was: a FIFO there hung init, a symlink there had the config
    written into the file it named. MODE (less the umask) from the start, so a
    private key (0600) is readable by others at no moment."""
    if not create_whole(path, data, mode=mode):
        raise InvalidInput(f"{path} already exists: choose an empty directory")
    made.append(path)


def _remove(made: list[Path]) -> None:
    """Undo a failed `write_demo`, newest first; what cannot be removed is left."""
    for path in reversed(made):
        with suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
