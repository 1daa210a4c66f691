"""The deployment file: parsed once, validated whole, every problem named by its key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardvault import config as config_module
from shardvault.config import ENV_VAR, Config, load, parse, resolve_path
from shardvault.demo import demo_config_text, write_demo
from shardvault.errors import ConfigError, InvalidInput
from shardvault.model import MAX_NODE_CAPACITY, NodeSpec, NodeState

DEMO = demo_config_text()


def load_text(tmp_path: Path, text: str | bytes) -> Config:
    path = tmp_path / "shardvault.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return load(path)


def error_for(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_load_takes_a_path_as_a_string_too(tmp_path: Path) -> None:
    # a library caller passing str(path) got an AttributeError from deep inside
    path = write_demo(tmp_path)
    assert load(str(path)) == load(path)


def test_demo_config_loads(tmp_path: Path) -> None:
    cfg = load(write_demo(tmp_path))
    assert (cfg.segment_size, cfg.k, cfg.m, cfg.custodian) == (1 << 20, 4, 2, "keyring")
    assert cfg.node_timeout == cfg.state_timeout == 30.0
    assert set(cfg.jurisdictions) == {"US", "SG", "EU"}
    assert set(cfg.tenants) == {"intl", "domestic"}
    assert len(cfg.nodes) == 18
    assert {n.jurisdiction for n in cfg.nodes_in("US")} == {"US"}
    node = cfg.node("us-n4")
    assert (node.facility, node.state, node.capacity) == ("us-fac-1", NodeState.ACTIVE, 1)
    assert node.location == str((tmp_path / "nodes" / "US" / "us-n4").resolve())
    assert cfg.state_dir == (tmp_path / "state").resolve()
    assert cfg.keyring_path == (tmp_path / "keys" / "keyring.json").resolve()
    assert cfg.governance is not None
    assert cfg.governance.custodian_name == "partner.demo.shardvault.local/custodian"
    with pytest.raises(InvalidInput, match="unknown node"):
        cfg.node("xx-n1")


def test_write_demo_refuses_to_overwrite(tmp_path: Path) -> None:
    write_demo(tmp_path)
    with pytest.raises(InvalidInput, match="already exists"):
        write_demo(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found.*init --demo"):
        load(tmp_path / "nope.toml")


def test_resolve_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_path(None) == Path("shardvault.toml")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.toml"))
    assert resolve_path(None) == tmp_path / "env.toml"
    assert resolve_path(tmp_path / "explicit.toml") == tmp_path / "explicit.toml"


def test_an_empty_config_path_is_refused_not_read_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an unset variable in a script would otherwise act on ./shardvault.toml, or on
    # $SHARDVAULT_CONFIG's deployment (found in review)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.toml"))
    with pytest.raises(ConfigError, match="config path is empty"):
        resolve_path("")
    monkeypatch.setenv(ENV_VAR, "")
    with pytest.raises(ConfigError, match=f"{ENV_VAR} is set but empty"):
        resolve_path(None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version = 1\n[storage\n", "not valid TOML"),
        (b"version = 1\n\xff\xfe\n", "not valid TOML"),
        ("version = 1\nversion = 2\n", "not valid TOML"),
        ("x = " + "[" * 5000, "not valid TOML"),
    ],
)
def test_unparsable_config(tmp_path: Path, text: str | bytes, expected: str) -> None:
    assert expected in error_for(tmp_path, text)


def replace_once(old: str, new: str) -> str:
    assert DEMO.count(old) >= 1, old
    return DEMO.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (replace_once("version = 1", 'version = "1"'), "version: must be 1 (found '1')"),
        (replace_once("version = 1\n", ""), "version: must be 1 (found None)"),
        # true == 1 and 1.0 == 1 in Python: both were read as version 1
        (replace_once("version = 1", "version = true"), "version: must be 1 (found True)"),
        (replace_once("version = 1", "version = 1.0"), "version: must be 1 (found 1.0)"),
        (
            replace_once("segment_size = 1048576", 'segment_size = "1MiB"'),
            "storage.segment_size: expected int, got str",
        ),
        (replace_once("k = 4", "k = 4.0"), "storage.k: expected int, got float"),
        (replace_once("m = 2", "m = true"), "storage.m: expected int, got bool"),
        (replace_once("segment_size = 1048576", "segment_size = 100"), "storage.segment_size"),
        (replace_once("k = 4", "k = 0"), "storage.k: k=0, m=2"),
        (replace_once("k = 4", "k = 31"), "k + m <= 32"),
        (
            replace_once("k = 4", 'k = 4\nnode_timeout = "30s"'),
            "storage.node_timeout: expected a number, got str",
        ),
        (
            replace_once("k = 4", "k = 4\nnode_timeout = true"),
            "storage.node_timeout: expected a number, got bool",
        ),
        (
            replace_once("k = 4", "k = 4\nnode_timeout = 0"),
            "storage.node_timeout: must be between 0.1 and 3600 seconds",
        ),
        (
            replace_once("k = 4", "k = 4\nnode_timeout = nan"),
            "storage.node_timeout: must be between 0.1 and 3600 seconds",
        ),
        (
            replace_once("k = 4", 'k = 4\nstate_timeout = "30s"'),
            "storage.state_timeout: expected a number, got str",
        ),
        (
            replace_once("k = 4", "k = 4\nstate_timeout = 7200"),
            "storage.state_timeout: must be between 0.1 and 3600 seconds",
        ),
        (replace_once('backend = "keyring"', 'backend = "hsm"'), "custodian.backend"),
        (replace_once('path = "keys/keyring.json"', "path = 7"), "custodian.path: expected str"),
        (
            replace_once('jurisdiction = "US"', "jurisdiction = 1"),
            "nodes[0].jurisdiction: expected str, got int",
        ),
        (
            replace_once('jurisdiction = "US"', 'jurisdiction = "JP"'),
            "nodes[0].jurisdiction: 'JP' is not a declared jurisdiction",
        ),
        (replace_once('id = "us-n1"', 'id = "US N1"'), "nodes[0].id: invalid node id"),
        (replace_once('id = "us-n1"\n', ""), "nodes[0].id: missing"),
        (replace_once('facility = "us-fac-1"', 'facility = "a/b"'), "nodes[0].facility"),
        (replace_once('backend = "local"', 'backend = "s3"'), "nodes[0].backend"),
        (replace_once('path = "nodes/US/us-n1"\n', ""), "nodes[0].path: missing"),
        (
            replace_once('id = "us-n2"', 'id = "us-n2"\ncapacity = 0'),
            "nodes[1].capacity: must be a positive integer",
        ),
        (
            replace_once('id = "us-n2"', 'id = "us-n2"\ncapacity = "3"'),
            "nodes[1].capacity: expected int, got str",
        ),
        (
            replace_once('id = "us-n2"', 'id = "us-n2"\nstate = "broken"'),
            "nodes[1].state: must be active, draining or down",
        ),
        (replace_once('id = "us-n2"', 'id = "us-n1"'), "nodes[1].id: duplicate node id 'us-n1'"),
        (replace_once("[tenants.intl]", "[tenants.Intl]"), "tenants.Intl: invalid tenant"),
        (
            replace_once("[tenants.intl]\n", "[tenants.intl]\njurisdictions = [[1]]\n"),
            "tenants.intl.jurisdictions: [1] is not a declared jurisdiction",
        ),
        (
            replace_once('path = "nodes/EU/eu-n1"', 'path = "nodes/US/us-n1"'),
            "nodes[12].path: ",
        ),
        (
            replace_once('path = "nodes/US/us-n2"', 'path = "nodes/US/us-n1/inner"'),
            "nodes[1].path: ",
        ),
        (replace_once('path = "nodes/US/us-n2"', 'path = "."'), "overlaps storage.state_dir"),
        (
            replace_once('path = "nodes/US/us-n2"', 'path = "a\\u0000b"'),
            "nodes[1].path: contains a NUL",
        ),
        (
            replace_once('state_dir = "state"', 'state_dir = "st\\u0000ate"'),
            "storage.state_dir: contains a NUL",
        ),
        (  # it made a folder named "~" beside the config
            replace_once('state_dir = "state"', 'state_dir = "~/vault-state"'),
            "storage.state_dir: '~/vault-state': '~' is not expanded",
        ),
        (
            replace_once('path = "nodes/US/us-n2"', 'path = "~/n2"'),
            "nodes[1].path: '~/n2': '~' is not expanded",
        ),
        (
            replace_once('path = "keys/keyring.json"', 'path = "~/keyring.json"'),
            "custodian.path: '~/keyring.json': '~' is not expanded",
        ),
        (
            replace_once("[tenants.intl]\n", '[tenants.intl]\njurisdictions = ["JP"]\n'),
            "tenants.intl.jurisdictions: 'JP' is not a declared jurisdiction",
        ),
        (
            replace_once("[tenants.intl]\n", '[tenants.intl]\njurisdictions = "US"\n'),
            "tenants.intl.jurisdictions: expected list, got str",
        ),
        (  # it registered nobody, saying "tenant intl does not keep users in US (it allows )"
            replace_once("[tenants.intl]\n", "[tenants.intl]\njurisdictions = []\n"),
            "tenants.intl.jurisdictions: name at least one jurisdiction (or leave it out: all)",
        ),
        (replace_once("[jurisdictions.US]", "[jurisdictions.us]"), "jurisdictions.us"),
        ("version = 1\n", "jurisdictions: declare at least one jurisdiction"),
        ("version = 1\nnodes = 5\n", "nodes: expected list, got int"),
        ("storage_dir = 'x'\n" + DEMO, "storage_dir: unknown key"),
        (DEMO + "\nstorage_dir = 'x'\n", "nodes[17].storage_dir: unknown key"),
        (
            replace_once("segment_size = 1048576", "segment_size = 1048576\nsegmnet_size = 4096"),
            "storage.segmnet_size: unknown key",
        ),
        (
            replace_once('backend = "keyring"', 'backend = "keyring"\npth = "x"'),
            "custodian.pth: unknown key",
        ),
        (
            replace_once('id = "us-n3"', 'id = "us-n3"\nstaet = "down"'),
            "nodes[2].staet: unknown key",
        ),
        (
            replace_once("[tenants.intl]\n", '[tenants.intl]\njurisdiction = ["US"]\n'),
            "tenants.intl.jurisdiction: unknown key",
        ),
        (
            replace_once('name = "Singapore"', 'name = "Singapore"\ncode = "SG"'),
            "jurisdictions.SG.code: unknown key",
        ),
        (
            replace_once("custodian_name = ", 'custodian_name = "a b" # '),
            "governance.custodian_name: must be non-empty, without spaces or '+'",
        ),
        (
            'version = 1\n[jurisdictions]\nUS = 5\nSG = {name = "Singapore"}\n',
            "jurisdictions.US: expected a table",
        ),
        (  # signatures count once per approver: a quorum of 2 over [dpo, dpo] is never met
            replace_once('approvers = ["dpo", "partner-officer"', 'approvers = ["dpo", "dpo"'),
            "governance.approvers: 'dpo' is listed twice",
        ),
        (
            replace_once('[tenants.intl]\nname = "International social app"\n', "").replace(
                "[tenants.domestic]", "[tenants]\nintl = 5\n\n[tenants.domestic]", 1
            ),
            "tenants.intl: expected a table",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_for(tmp_path, text)
    assert expected in message
    assert message.startswith(f"config {(tmp_path / 'shardvault.toml').resolve()}: ")


def test_nodes_sharing_a_directory_are_named(tmp_path: Path) -> None:
    # one disk would count as two failure domains, and each cell's gc would
    # delete the other's shards as orphans
    text = DEMO
    for n in (1, 2, 3):
        text = text.replace(f'path = "nodes/EU/eu-n{n}"', f'path = "nodes/US/us-n{n}"')
    message = error_for(tmp_path, text)
    us_n1 = (tmp_path / "nodes" / "US" / "us-n1").resolve()
    assert f"nodes[12].path: {us_n1} overlaps node us-n1's directory {us_n1}" in message
    assert "nodes[14].path" in message and "give every node a directory of its own" in message


@pytest.mark.parametrize(
    ("key", "old", "new"),
    [
        ("custodian.path", '"keys/keyring.json"', '"nodes/US/us-n1/tmp/keyring.json"'),
        ("custodian.path", '"keys/keyring.json"', '"nodes/US/us-n1/keyring.json"'),
        ("governance.policy", 'policy = "policy.toml"', 'policy = "nodes/SG/sg-n2/policy.toml"'),
        ("governance.partner_dir", '"partner"', '"nodes/EU/eu-n1/partner"'),
        (
            "governance.custodian_policy",
            '"partner/custodian-policy.toml"',
            '"nodes/EU/eu-n1/c.toml"',
        ),
    ],
)
def test_a_deployment_file_inside_a_node_directory_is_refused(
    tmp_path: Path, key: str, old: str, new: str
) -> None:
    """A node's directory is its shards': gc deleted a keyring configured in a node's
    tmp/ as a stale temporary (and every object with it), and custodian keys or
    policies on a storage node are no longer the custodian's alone."""
    message = error_for(tmp_path, replace_once(old, new))
    assert f"{key}: " in message, message
    assert "inside node" in message and "directory" in message, message


def test_a_node_directory_that_is_a_symlink_to_another_nodes_is_named(tmp_path: Path) -> None:
    # the node's own directory is followed by readlink, never statted (a hung disk's
    # mount point never answers a stat): a link to another node's directory is still one
    (tmp_path / "disks" / "one").mkdir(parents=True)
    (tmp_path / "disks" / "alias").symlink_to("one")
    (tmp_path / "link-to-alias").symlink_to("disks/alias")
    text = DEMO.replace('path = "nodes/US/us-n1"', 'path = "disks/one"')
    text = text.replace('path = "nodes/US/us-n2"', 'path = "link-to-alias"')
    one = (tmp_path / "disks" / "one").resolve()
    assert f"nodes[1].path: {one} overlaps node us-n1's directory {one}" in error_for(
        tmp_path, text
    )
    text = DEMO.replace('path = "nodes/US/us-n2"', 'path = "link-to-alias/../gone/n2"')
    gone = tmp_path.resolve() / "disks" / "gone" / "n2"  # "..": of the link's target
    assert load_text(tmp_path, text).node("us-n2").location == str(gone)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_config_that_is_not_a_regular_file_is_refused_unopened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "shardvault.toml"
    if kind == "fifo":
        os.mkfifo(path)  # opening it would wait forever for a writer
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")  # reading it would never end
    with pytest.raises(ConfigError, match="is not a regular file"):
        load(path)


def test_oversized_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shardvault.toml"
    path.write_bytes(DEMO.encode() + b"#" * config_module.MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="is larger than"):
        load(path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = DEMO.replace("k = 4", 'k = "four"').replace('id = "sg-n3"', 'id = "sg-n2"')
    text = text.replace('state_dir = "state"', "state_dir = 1")
    message = error_for(tmp_path, text)
    for part in ("storage.k: expected int", "nodes[8].id: duplicate", "storage.state_dir"):
        assert part in message


def test_node_state_and_capacity_are_read(tmp_path: Path) -> None:
    text = DEMO.replace('id = "us-n2"', 'id = "us-n2"\nstate = "draining"\ncapacity = 3')
    node = load_text(tmp_path, text).node("us-n2")
    assert (node.state, node.capacity) == (NodeState.DRAINING, 3)


def test_a_node_weighing_more_than_the_bound_is_refused_by_the_library_too() -> None:
    # the config reports it naming the key; a NodeSpec made in code is held to the same
    NodeSpec("n1", "US", "f1", "memory", "", capacity=MAX_NODE_CAPACITY)
    with pytest.raises(
        InvalidInput, match=f"capacity must be a whole number from 1 to {MAX_NODE_CAPACITY}"
    ):
        NodeSpec("n1", "US", "f1", "memory", "", capacity=MAX_NODE_CAPACITY + 1)


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, DEMO)
    with pytest.raises(AttributeError):
        cfg.k = 9  # type: ignore[misc]


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, len(DEMO) - 1))
def test_half_written_config_is_refused_or_a_clean_prefix(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    """Whatever point a write stopped at, loading fails with ConfigError, never anything else.

    A cut exactly between two node tables is indistinguishable from a smaller
    deployment, so that case must at least load only the nodes written whole.
    """
    directory = tmp_path_factory.mktemp("cut")
    full = parse(config_module.tomllib.loads(DEMO), directory / "shardvault.toml")
    try:
        cfg = load_text(directory, DEMO[:cut])
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.nodes == full.nodes[: len(cfg.nodes)]


def test_two_inits_at_once_leave_the_one_that_succeeds_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `init --demo DIR` at once: the one behind made the node directories, the
    other (checked before they existed) then skipped them and wrote every file, and the
    one behind, refused its first key, removed the directories it had made: the init
    that reported success left a deployment without its nodes' directories."""
    import fcntl
    import threading

    from shardvault import demo

    target = tmp_path / "deploy"
    real_make_dirs, real_create, real_flock = demo._make_dirs, demo.create_whole, fcntl.flock
    other_paused, other_waits, dirs_made = (threading.Event() for _ in range(3))
    outcome: dict[str, str] = {}

    def the_other_init() -> None:  # as another process: its own lock, its own made list
        try:
            write_demo(target)
            outcome["other"] = "ok"
        except InvalidInput as exc:
            outcome["other"] = str(exc)
        finally:
            other_paused.set()
            other_waits.set()

    other = threading.Thread(target=the_other_init)

    def make_dirs(path: Path, made: list[Path], mode: int = 0o777) -> None:
        if threading.current_thread() is other and not dirs_made.is_set():
            other_paused.set()  # checked, nothing made yet: held until this init made its
            dirs_made.wait(10)
        elif not other.is_alive() and "other" not in outcome:
            other.start()
            other_paused.wait(10)
        real_make_dirs(path, made, mode)

    def create_whole(path: Path, content: bytes, mode: int = 0o600) -> bool:
        if threading.current_thread() is not other and not dirs_made.is_set():
            dirs_made.set()  # let the other go on, and wait until it is done or waits
            other_waits.wait(10)
        return real_create(path, content, mode)

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread() is other and operation == fcntl.LOCK_EX:
            other_waits.set()
        real_flock(fd, operation)

    monkeypatch.setattr(demo, "_make_dirs", make_dirs)
    monkeypatch.setattr(demo, "create_whole", create_whole)
    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        write_demo(target)
        outcome["this"] = "ok"
    except InvalidInput as exc:
        outcome["this"] = str(exc)
    other.join(30)
    assert sorted(outcome.values())[-1] == "ok" and "already exists" in sorted(outcome.values())[0]
    config = load(target / "shardvault.toml")
    assert [n.id for n in config.nodes if not Path(n.location).is_dir()] == []


def test_a_directory_another_init_makes_meanwhile_is_written_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inits at once into a new DIR: the one whose mkdir came second refused
    ("cannot create DIR: File exists") rather than wait its turn in it."""
    target = tmp_path / "deploy"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        if self == target and not target.exists():
            real_mkdir(self)  # the other init, between this one's look and its mkdir
        real_mkdir(self, mode, parents, exist_ok)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    config = load(write_demo(target))
    assert all(Path(node.location).is_dir() for node in config.nodes)
