"""The deployment file: parsed once, validated whole, frozen, passed down.

This is the only module that reads the environment (``SHARDVAULT_CONFIG``).
Every problem found is reported at once, each naming the key at fault, e.g.
``nodes[3].facility: missing``. Format version 1 is described in docs/formats.md.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardvault.config_layout import Layout, layout_problems
from shardvault.durability import open_regular
from shardvault.errors import ConfigError, InvalidInput
from shardvault.format_version import refuse_newer
from shardvault.keys.keyring import keyring_files
from shardvault.model import (
    LOCAL_ADMIN,
    MAX_NODE_CAPACITY,
    NodeSpec,
    NodeState,
    facility_name,
    jurisdiction_code,
    named,
    node_id,
    principal_id,
    shown,
    tenant_name,
)
from shardvault.path_limits import why_too_long

FORMAT_VERSION = 1
DEFAULT_FILE = "shardvault.toml"
ENV_VAR = "SHARDVAULT_CONFIG"
TOKEN_ENV_VAR = "SHARDVAULT_TOKEN"
MAX_CONFIG_BYTES = 1 << 20  # a deployment file is a few KiB; this bounds a mistaken path
MIN_SEGMENT = 4096
MAX_SEGMENT = 64 << 20
DEFAULT_NODE_TIMEOUT = 30.0  # seconds: MinIO's default drive timeout, far above a healthy fsync
MIN_NODE_TIMEOUT, MAX_NODE_TIMEOUT = 0.1, 3600.0
# seconds a command waits in one call into a disk of its own (cli/watchdog.py)
DEFAULT_STATE_TIMEOUT = 30.0
BACKENDS = ("local", "memory")
CUSTODIANS = ("keyring", "memory")


@dataclass(frozen=True, slots=True)
class TenantSpec:
    name: str
    display_name: str
    jurisdictions: tuple[str, ...] | None = None

    def allows(self, jurisdiction: str) -> bool:
        return self.jurisdictions is None or jurisdiction in self.jurisdictions


@dataclass(frozen=True, slots=True)
class GovernanceSpec:
    """Where the access policy, the partner's custodian policy and keys live; approval rules."""

    policy_path: Path
    custodian_policy_path: Path
    partner_dir: Path
    origin_prefix: str = "shardvault.local"
    partner_name: str = "partner.shardvault.local/witness"
    custodian_name: str = "partner.shardvault.local/custodian"
    local_admin: bool = True
    approvers: tuple[str, ...] = ()
    approval_quorum: int = 2
    approval_ttl: int = 86400

    def origin(self, jurisdiction: str) -> str:
        """The audit log origin (and cell key name), e.g. ``shardvault.local/cell-us``."""
        return f"{self.origin_prefix}/cell-{jurisdiction.lower()}"


def default_governance(base: Path) -> GovernanceSpec:
    return GovernanceSpec(
        policy_path=(base / "policy.toml").resolve(),
        custodian_policy_path=(base / "partner" / "custodian-policy.toml").resolve(),
        partner_dir=(base / "partner").resolve(),
    )


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    state_dir: Path
    segment_size: int
    k: int
    m: int
    custodian: str
    keyring_path: Path
    jurisdictions: dict[str, str]
    tenants: dict[str, TenantSpec]
    nodes: tuple[NodeSpec, ...] = field(default=())
    governance: GovernanceSpec | None = None
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    state_timeout: float = DEFAULT_STATE_TIMEOUT

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def nodes_in(self, jurisdiction: str) -> list[NodeSpec]:
        return [node for node in self.nodes if node.jurisdiction == jurisdiction]

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise InvalidInput(f"unknown node {node_id!r}")

    def tenant(self, name: str) -> TenantSpec:
        spec = self.tenants.get(name)
        if spec is None:
            known = ", ".join(sorted(self.tenants)) or "none"
            raise InvalidInput(f"unknown tenant {shown(name)} (configured: {known})")
        return spec

    def jurisdiction(self, code: str) -> str:
        jurisdiction_code(code)
        if code not in self.jurisdictions:
            known = ", ".join(sorted(self.jurisdictions)) or "none"
            raise InvalidInput(f"unknown jurisdiction {code!r} (configured: {known})")
        return code


def resolve_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $SHARDVAULT_CONFIG, else ./shardvault.toml.

    An empty one is refused, not read as none: a script whose variable came out
    empty would otherwise act on whatever deployment the next choice names.
    """
    if explicit is not None:
        if not os.fspath(explicit):
            raise ConfigError("the config path is empty: name the deployment's file")
        return Path(explicit)
    from_env = os.environ.get(ENV_VAR)
    if from_env == "":
        raise ConfigError(
            f"{ENV_VAR} is set but empty: set it to the deployment's file, or unset it"
        )
    return Path(from_env) if from_env is not None else Path(DEFAULT_FILE)


def token_from_env() -> str | None:
    """An API token from $SHARDVAULT_TOKEN, for the CLI when --token is not given."""
    return os.environ.get(TOKEN_ENV_VAR) or None


def load(path: str | os.PathLike[str]) -> Config:
    """The deployment in the TOML file at `path`, validated whole (`ConfigError` if not)."""
    path = Path(path)
    try:
        absolute = path.resolve()  # named so in every message, read or not
    except ValueError as exc:  # a NUL in the path: nothing to resolve, nor to open
        raise ConfigError(f"config path {str(path)!r}: {exc}") from None
    raw = _read_config(path, absolute)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {named(str(absolute))}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(
            f"config {named(str(absolute))}: not valid TOML: nested too deeply"
        ) from None
    return parse(doc, absolute)


def _read_config(path: Path, absolute: Path) -> bytes:
    """The file's bytes; a FIFO or device is refused, never opened blocking (it could
    block or never end, even one swapped in after a check), and a file over
    MAX_CONFIG_BYTES is refused rather than read whole. PATH is opened as given (its
    absolute path may be the longer), and named by ABSOLUTE, as every config error
    names it (by its first characters where too long to repeat)."""
    name = named(str(absolute))
    try:
        opened = open_regular(path)
        if isinstance(opened, str):
            raise ConfigError(f"config {name} is not a regular file: pass the deployment's TOML")
        with opened:
            raw = opened.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"config {name} not found: pass --config, set {ENV_VAR}, "
            "or create one with 'shardvault init --demo DIR'"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config {name}: {why_too_long(exc) or exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {name} is larger than {MAX_CONFIG_BYTES} bytes: is it the TOML?")
    return raw


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def _get(
    table: dict[str, Any],
    key: str,
    kind: type,
    where: str,
    problems: _Problems,
    default: Any = None,
    required: bool = False,
) -> Any:
    if key not in table:
        if required:
            problems.add(f"{where}{key}", "missing")
        return default
    value = table[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        problems.add(f"{where}{key}", f"expected {kind.__name__}, got {type(value).__name__}")
        return default
    if isinstance(value, str) and "\x00" in value:  # no path or name may hold one
        problems.add(f"{where}{key}", "contains a NUL character")
        return default
    return value


def _get_path(
    table: dict[str, Any], key: str, where: str, problems: _Problems, default: str
) -> str:
    """A path: absolute, or relative to the config's directory. A leading ``~`` is not
    expanded (no shell reads this file): taken as written it made a folder named ``~``
    beside the config, so it is refused, and the message says what to write instead."""
    value: str = _get(table, key, str, where, problems, default=default)
    if value.startswith("~"):
        problems.add(
            f"{where}{key}",
            f"{value!r}: '~' is not expanded; give an absolute path, or one relative to "
            "the config's directory",
        )
        return default
    return value


def _unknown_keys(table: Any, known: set[str], where: str, problems: _Problems) -> None:
    """A misspelt key (``staet = "down"``) is reported, never silently ignored."""
    if isinstance(table, dict):
        for key in sorted(set(table) - known):
            problems.add(f"{where}{key}", "unknown key")


def _check_name(check: Any, value: Any, where: str, problems: _Problems) -> bool:
    try:
        check(value)
    except InvalidInput as exc:
        problems.add(where, str(exc))
        return False
    return True


def parse(doc: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document; raises ConfigError naming every bad key. A file of
    a later format is `NewerFormat` (exit 1: upgrade), its other keys not judged: they
    are that format's."""
    refuse_newer(doc.get("version"), FORMAT_VERSION, f"config {named(str(path))}")
    problems = _Problems()
    known_top = {
        "version",
        "storage",
        "custodian",
        "jurisdictions",
        "tenants",
        "nodes",
        "governance",
    }
    for key in sorted(set(doc) - known_top):
        problems.add(key, "unknown key")
    version = doc.get("version")
    if type(version) is not int or version != FORMAT_VERSION:  # not true, nor 1.0
        problems.add("version", f"must be {FORMAT_VERSION} (found {version!r})")
    base = path.parent

    storage = _get(doc, "storage", dict, "", problems, default={})
    _unknown_keys(
        storage,
        {"state_dir", "segment_size", "k", "m", "node_timeout", "state_timeout"},
        "storage.",
        problems,
    )
    state_dir = _get_path(storage, "state_dir", "storage.", problems, default="state")
    segment_size = _get(storage, "segment_size", int, "storage.", problems, default=1 << 20)
    if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        problems.add("storage.segment_size", f"must be between {MIN_SEGMENT} and {MAX_SEGMENT}")
    k = _get(storage, "k", int, "storage.", problems, default=4)
    m = _get(storage, "m", int, "storage.", problems, default=2)
    if k < 1 or m < 1 or k + m > 32:
        problems.add("storage.k", f"k={k}, m={m}: need k >= 1, m >= 1 and k + m <= 32")
    node_timeout = _seconds(storage, "node_timeout", DEFAULT_NODE_TIMEOUT, problems)
    state_timeout = _seconds(storage, "state_timeout", DEFAULT_STATE_TIMEOUT, problems)

    custodian = _get(doc, "custodian", dict, "", problems, default={})
    _unknown_keys(custodian, {"backend", "path"}, "custodian.", problems)
    custodian_backend = _get(custodian, "backend", str, "custodian.", problems, default="keyring")
    if custodian_backend not in CUSTODIANS:
        problems.add("custodian.backend", f"must be one of {', '.join(CUSTODIANS)}")
    keyring = _get_path(custodian, "path", "custodian.", problems, default="keys/keyring.json")

    jurisdictions: dict[str, str] = {}
    for code, spec in _get(doc, "jurisdictions", dict, "", problems, default={}).items():
        where = f"jurisdictions.{code}"
        if not isinstance(spec, dict):
            problems.add(where, "expected a table")
        elif _check_name(jurisdiction_code, code, where, problems):
            _unknown_keys(spec, {"name"}, where + ".", problems)
            jurisdictions[code] = _get(spec, "name", str, where + ".", problems, default=code)
    if not jurisdictions:
        problems.add("jurisdictions", "declare at least one jurisdiction")

    tenants: dict[str, TenantSpec] = {}
    for name, spec in _get(doc, "tenants", dict, "", problems, default={}).items():
        where = f"tenants.{name}"
        if not isinstance(spec, dict):
            problems.add(where, "expected a table")
            continue
        if not _check_name(tenant_name, name, where, problems):
            continue
        _unknown_keys(spec, {"name", "jurisdictions"}, where + ".", problems)
        allowed = _get(spec, "jurisdictions", list, where + ".", problems)
        if allowed == []:  # a tenant that may keep its users nowhere registers nobody
            problems.add(
                where + ".jurisdictions", "name at least one jurisdiction (or leave it out: all)"
            )
        for at, code in enumerate(allowed or ()):
            if not isinstance(code, str) or code not in jurisdictions:
                problems.add(where + ".jurisdictions", f"{code!r} is not a declared jurisdiction")
            elif code in allowed[:at]:  # a slip: meant another jurisdiction, or a copy
                problems.add(where + ".jurisdictions", f"{code!r} is listed twice")
        tenants[name] = TenantSpec(
            name,
            _get(spec, "name", str, where + ".", problems, default=name),
            tuple(allowed) if allowed is not None else None,
        )

    nodes: dict[str, NodeSpec] = {}  # by "nodes[i]", which names a problem
    seen: set[str] = set()
    for number, spec in enumerate(_get(doc, "nodes", list, "", problems, default=[])):
        node = _parse_node(spec, f"nodes[{number}]", base, jurisdictions, problems)
        if node is not None:
            if node.id in seen:
                problems.add(f"nodes[{number}].id", f"duplicate node id {node.id!r}")
            seen.add(node.id)
            nodes[f"nodes[{number}]"] = node
    state = node_directory(base / state_dir)  # not statted: a hung disk may be mounted there
    governance = _parse_governance(doc, base, problems)
    keyring_path = (base / keyring).resolve()
    layout = Layout(
        config=path,
        state_dir=state,
        keyring=keyring_path,
        policy=governance.policy_path,
        custodian_policy=governance.custodian_policy_path,
        partner_dir=governance.partner_dir,
        nodes=nodes,
        keyring_files=keyring_files(keyring_path) if keyring_path.name else (),
    )
    for where, what in layout_problems(layout):
        problems.add(where, what)

    if problems.items:
        raise ConfigError(f"config {path}: " + "; ".join(problems.items))
    return Config(
        path=path,
        state_dir=state,
        segment_size=segment_size,
        k=k,
        m=m,
        custodian=custodian_backend,
        keyring_path=keyring_path,
        jurisdictions=jurisdictions,
        tenants=tenants,
        nodes=tuple(nodes.values()),
        governance=governance,
        node_timeout=node_timeout,
        state_timeout=state_timeout,
    )


def _seconds(storage: dict[str, Any], key: str, default: float, problems: _Problems) -> float:
    """A deadline in seconds, a number, integer or not: how long a caller waits for a
    node's shard I/O before routing around it (`node_timeout`, vault/deadline.py), or a
    command for one call on its own disks before giving up (`state_timeout`,
    cli/watchdog.py)."""
    value = storage.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(f"storage.{key}", f"expected a number, got {type(value).__name__}")
        return default
    if not MIN_NODE_TIMEOUT <= value <= MAX_NODE_TIMEOUT:  # a NaN fails this too
        problems.add(
            f"storage.{key}",
            f"must be between {MIN_NODE_TIMEOUT:g} and {MAX_NODE_TIMEOUT:g} seconds",
        )
        return default
    return float(value)


_GOVERNANCE_KEYS = {
    "policy",
    "custodian_policy",
    "partner_dir",
    "origin_prefix",
    "partner_name",
    "custodian_name",
    "local_admin",
    "approvers",
    "approval_quorum",
    "approval_ttl",
}


_SYMLINK_HOPS = 40  # as the kernel's limit: a loop of links ends


def node_directory(path: Path) -> Path:
    """PATH with its symlinks followed, as `Path.resolve` follows them, but its own last
    component asked of by `readlink` alone, never statted: a node's disk (or the state
    directory's) is mounted there, a stat of a mount point asks the file system mounted
    on it, and a hung disk's never answers (reading the config, every command, waited
    for ever)."""
    for _ in range(_SYMLINK_HOPS):
        if path.name in ("", ".."):  # no last component of its own: statting is all there is
            return path.resolve()
        path = path.parent.resolve() / path.name
        try:
            link = os.readlink(path)
        except OSError:  # not a symlink (EINVAL), or not there: kept as named, as resolve keeps it
            return path
        path = path.parent / link
    return path


def _parse_governance(doc: dict[str, Any], base: Path, problems: _Problems) -> GovernanceSpec:
    table = _get(doc, "governance", dict, "", problems, default={})
    where = "governance."
    _unknown_keys(table, _GOVERNANCE_KEYS, where, problems)
    policy = _get_path(table, "policy", where, problems, default="policy.toml")
    partner = _get_path(table, "partner_dir", where, problems, default="partner")
    custodian_policy = _get_path(
        table, "custodian_policy", where, problems, default=f"{partner}/custodian-policy.toml"
    )
    prefix = _get(table, "origin_prefix", str, where, problems, default="shardvault.local")
    partner_name = _get(
        table, "partner_name", str, where, problems, default="partner.shardvault.local/witness"
    )
    custodian_name = _get(
        table, "custodian_name", str, where, problems, default="partner.shardvault.local/custodian"
    )
    for key, value in (
        ("origin_prefix", prefix), ("partner_name", partner_name),
        ("custodian_name", custodian_name),
    ):  # fmt: skip
        if not value or any(c.isspace() or c == "+" for c in value):
            problems.add(where + key, "must be non-empty, without spaces or '+'")
    local_admin = _get(table, "local_admin", bool, where, problems, default=True)
    approvers = _get(table, "approvers", list, where, problems, default=[])
    if not all(isinstance(a, str) and a for a in approvers):
        problems.add(where + "approvers", "must be a list of principal ids")
        approvers = []
    elif not all([_check_name(principal_id, a, where + "approvers", problems) for a in approvers]):
        approvers = []  # `principal add` refuses such an id: its quorum could never be met
    elif LOCAL_ADMIN in approvers:  # whoever runs the CLI without a token signs as it
        problems.add(
            where + "approvers",
            f"{LOCAL_ADMIN!r} is the CLI's built-in principal, which anyone at the deployment "
            "acts as without a token: it would let the operator approve alone; list "
            "registered principals only",
        )
        approvers = [a for a in approvers if a != LOCAL_ADMIN]
    repeated = next((a for i, a in enumerate(approvers) if a in approvers[:i]), None)
    if repeated is not None:  # one signature per approver: the quorum would count it once
        problems.add(where + "approvers", f"{shown(repeated)} is listed twice")
        approvers = list(dict.fromkeys(approvers))
    quorum = _get(table, "approval_quorum", int, where, problems, default=2)
    if quorum < 1:
        problems.add(where + "approval_quorum", "must be at least 1")
    elif approvers and quorum > len(approvers):
        problems.add(
            where + "approval_quorum", f"{quorum} is more than the {len(approvers)} approvers"
        )
    ttl = _get(table, "approval_ttl", int, where, problems, default=86400)
    if ttl < 1:
        problems.add(where + "approval_ttl", "must be a positive number of seconds")
    return GovernanceSpec(
        policy_path=(base / policy).resolve(),
        custodian_policy_path=(base / custodian_policy).resolve(),
        partner_dir=(base / partner).resolve(),
        origin_prefix=prefix,
        partner_name=partner_name,
        custodian_name=custodian_name,
        local_admin=local_admin,
        approvers=tuple(approvers),
        approval_quorum=quorum,
        approval_ttl=ttl,
    )


def _parse_node(
    spec: Any, where: str, base: Path, jurisdictions: dict[str, str], problems: _Problems
) -> NodeSpec | None:
    if not isinstance(spec, dict):
        problems.add(where, "expected a table")
        return None
    before = len(problems.items)
    known = {
        "id",
        "jurisdiction",
        "facility",
        "backend",
        "path",
        "capacity",
        "state",
        "operator",
        "pack_limit",
    }
    _unknown_keys(spec, known, where + ".", problems)
    ident = _get(spec, "id", str, where + ".", problems, required=True)
    jurisdiction = _get(spec, "jurisdiction", str, where + ".", problems, required=True)
    facility = _get(spec, "facility", str, where + ".", problems, required=True)
    backend = _get(spec, "backend", str, where + ".", problems, default="local")
    location = _get_path(spec, "path", where + ".", problems, default="")
    capacity = _get(spec, "capacity", int, where + ".", problems, default=1)
    pack_limit = _get(spec, "pack_limit", int, where + ".", problems, default=64 << 10)
    state = _get(spec, "state", str, where + ".", problems, default="active")
    operator = _get(spec, "operator", str, where + ".", problems, default="operator")
    if ident is not None:
        _check_name(node_id, ident, where + ".id", problems)
    if facility is not None:
        _check_name(facility_name, facility, where + ".facility", problems)
    if jurisdiction is not None and jurisdiction not in jurisdictions:
        problems.add(where + ".jurisdiction", f"{jurisdiction!r} is not a declared jurisdiction")
    if backend not in BACKENDS:
        problems.add(where + ".backend", f"must be one of {', '.join(BACKENDS)}")
    if backend == "local" and not location:
        problems.add(where + ".path", "missing (a local node needs a directory)")
    if state not in {s.value for s in NodeState}:
        problems.add(where + ".state", "must be active, draining or down")
    if capacity < 1:
        problems.add(where + ".capacity", "must be a positive integer")
    elif capacity > MAX_NODE_CAPACITY:  # a weight of 2^63 left its cell's other nodes none
        problems.add(
            where + ".capacity",
            f"{capacity} is more than {MAX_NODE_CAPACITY}: it is a weight relative to the "
            "other nodes' (say each disk's size in GiB)",
        )
    if not 0 <= pack_limit <= 16 << 20:
        problems.add(where + ".pack_limit", "must be between 0 (no packs) and 16 MiB")
    if len(problems.items) != before:
        return None
    resolved = str(node_directory(base / location)) if location else ""
    return NodeSpec(
        id=ident,
        jurisdiction=jurisdiction,
        facility=facility,
        backend=backend,
        location=resolved,
        operator=operator,
        capacity=capacity,
        state=NodeState(state),
        pack_limit=pack_limit,
    )
