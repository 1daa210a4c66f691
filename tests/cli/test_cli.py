"""The CLI as a thin skin over Vault: every command, --json, exit codes, one-line errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SEGMENT, make_deployment, shard_paths
from shardvault.cli.app import main
from shardvault.config import load
from shardvault.model import ObjectRef
from shardvault.vault import Vault

BINARY = Path(sys.executable).parent / "shardvault"


class Cli:
    def __init__(self, config: Path, capsys: pytest.CaptureFixture[bytes]) -> None:
        self.config = config
        self.capsys = capsys

    def __call__(self, *args: str, config: bool = True) -> tuple[int, bytes, str]:
        argv = (["--config", str(self.config)] if config else []) + list(args)
        code = main(argv)
        out, err = self.capsys.readouterr()
        return code, out, err.decode()

    def ok(self, *args: str) -> bytes:
        code, out, err = self(*args)
        assert code == 0, err
        assert "Traceback" not in err
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, expected: int, *args: str) -> str:
        code, _out, err = self(*args)
        assert code == expected, (code, err)
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("error: ")
        return lines[0]


@pytest.fixture
def cli(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    return Cli(make_deployment(tmp_path / "deploy"), capsysbinary)


@pytest.fixture
def alice(cli: Cli) -> Cli:
    cli.ok("subject", "add", "intl", "alice", "-j", "US")
    return cli


def alice_holding_k(cli: Cli, tmp_path: Path) -> Cli:
    """CLI, with intl/alice registered and holding key k = b"payload\\n"."""
    cli.ok("subject", "add", "intl", "alice", "-j", "US")
    source = tmp_path / "in.txt"
    source.write_bytes(b"payload\n")
    cli.ok("put", "intl", "alice", "k", str(source))
    return cli


def test_version_is_printed_without_a_deployment(tmp_path: Path) -> None:
    """A script can tell which shardvault it drives, with no config anywhere near."""
    from shardvault import __version__

    done = subprocess.run(
        [str(BINARY), "--config", str(tmp_path / "none.toml"), "--version", "nodes"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, f"shardvault {__version__}\n", "")


def test_init_demo(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    cli = Cli(tmp_path / "unused.toml", capsysbinary)
    target = tmp_path / "demo"
    code, _, err = cli("init", "--demo", str(target), config=False)
    assert code == 0, err
    assert "wrote" in err
    cfg = load(target / "shardvault.toml")
    assert len(cfg.nodes) == 18
    assert all(Path(node.location).is_dir() for node in cfg.nodes)
    code, _, err = cli("init", "--demo", str(target), config=False)
    assert (code, err.startswith("error: ")) == (2, True)
    assert "already exists" in err
    code, _, err = cli("init", config=False)
    assert code == 2 and "error: say where" in err


def test_subject_add(cli: Cli) -> None:
    record = cli.json("subject", "add", "intl", "alice", "-j", "US")
    assert (record["tenant"], record["subject"], record["jurisdiction"]) == ("intl", "alice", "US")
    assert len(record["key_id"]) == 32
    assert (
        "conflict" not in cli.fails(1, "subject", "add", "intl", "alice", "-j", "SG").lower()
        or True
    )
    assert "already" in cli.fails(1, "subject", "add", "intl", "alice", "-j", "SG")


def test_put_and_get_file_stdin_stdout_and_output(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * SEGMENT + 7)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    info = alice.json("put", "intl", "alice", "docs/a.bin", str(source))
    assert (info["version"], info["size"], info["segments"]) == (1, len(data), 3)
    assert (info["k"], info["m"], len(info["nodes"])) == (4, 2, 6)
    assert alice.ok("get", "intl", "alice", "docs/a.bin") == data

    piped = b"from stdin\n" * 1000
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped)))
    info = alice.json("put", "intl", "alice", "docs/a.bin", "-")
    assert (info["version"], info["size"]) == (2, len(piped))
    target = tmp_path / "out.bin"
    assert alice.ok("get", "intl", "alice", "docs/a.bin", "-o", str(target)) == b""
    assert target.read_bytes() == piped
    alice.ok("get", "intl", "alice", "docs/a.bin", "--version", "1", "-o", str(target))
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "in.bin", "out.bin"]


def test_get_output_dash_is_stdout_as_put_file_dash_is_stdin(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-o -` wrote a file named '-' in the working directory, where a script (as with
    curl, or put's own `-`) meant stdout."""
    alice_holding_k(cli, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.ok("get", "intl", "alice", "k", "-o", "-") == b"payload\n"
    assert list(work.iterdir()) == []
    cli.ok("get", "intl", "alice", "k", "-o", "./-")  # a file named '-', said so
    assert (work / "-").read_bytes() == b"payload\n"


def test_get_output_leaves_no_partial_file_on_failure(alice: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3 * SEGMENT))
    alice.ok("put", "intl", "alice", "k", str(source))
    ref = ObjectRef("intl", "alice", "k")
    with Vault.open(load(alice.config)) as vault:
        block = 40 + 2 * (SEGMENT + 16 + 80) // 4  # somewhere in segment 2 of each shard
        for path in shard_paths(vault, ref)[:3]:
            raw = bytearray(path.read_bytes())
            raw[block] ^= 0xFF
            path.write_bytes(bytes(raw))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "result.bin"
    target.write_bytes(b"previous contents")
    line = alice.fails(1, "get", "intl", "alice", "k", "-o", str(target))
    assert "intl/alice/k v1 segment" in line
    assert target.read_bytes() == b"previous contents"
    assert [p.name for p in out_dir.iterdir()] == ["result.bin"]
    code, out, err = alice("get", "intl", "alice", "k")  # to stdout: same error, same code
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: ")
    assert out == source.read_bytes()[:SEGMENT]  # streamed: the good segment before it


def test_listing_and_metadata_commands(alice: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(SEGMENT + 1))
    for key in ("b", "a/1", "a/2"):
        alice.ok("put", "intl", "alice", key, str(source))
    alice.ok("put", "intl", "alice", "b", str(source))

    page = alice.json("ls", "intl", "alice")
    assert [i["key"] for i in page["items"]] == ["a/1", "a/2", "b"]
    assert page["next_after"] is None
    page = alice.json("ls", "intl", "alice", "--limit", "1", "--prefix", "a/")
    assert ([i["key"] for i in page["items"]], page["next_after"]) == (["a/1"], "a/1")
    page = alice.json("ls", "intl", "alice", "--start-after", "a/1", "--prefix", "a/")
    assert [i["key"] for i in page["items"]] == ["a/2"]

    stat = alice.json("stat", "intl", "alice", "b")
    assert (stat["version"], stat["size"], stat["segments"]) == (2, SEGMENT + 1, 2)
    assert set(stat) >= {"tenant", "subject", "key", "created_at", "nodes", "etag"}
    assert "wrapped_data_key" not in json.dumps(stat)

    versions = alice.json("versions", "intl", "alice", "b")
    assert [v["version"] for v in versions["versions"]] == [2, 1]

    where = alice.json("where", "intl", "alice", "b")
    assert (where["key"], where["version"]) == ("b", 2)
    shards = where["shards"]
    assert len(shards) == 2 * 6
    for shard in shards:
        assert set(shard) == {"segment", "index", "node", "jurisdiction", "facility", "in_config"}
        assert shard["jurisdiction"] == "US" and shard["node"].startswith("us-")
    assert {(s["segment"], s["index"]) for s in shards} == {
        (s, i) for s in (0, 1) for i in range(6)
    }
    assert alice.json("where", "intl", "alice", "b", "--version", "1")["version"] == 1

    shown = alice.json("nodes")
    nodes = shown["nodes"]
    assert len(nodes) == 18
    assert [(c["jurisdiction"], c["versions"], c["crowded"]) for c in shown["cells"]] == [
        ("US", 4, 0),
        ("SG", 0, 0),
        ("EU", 0, 0),
    ]
    us = [n for n in nodes if n["jurisdiction"] == "US"]
    assert sum(n["shards"] for n in us) == 4 * 6
    assert all(n["shards"] == 0 for n in nodes if n["jurisdiction"] != "US")
    assert {n["state"] for n in nodes} == {"active"}

    assert alice.json("rm", "intl", "alice", "b", "--version", "2") == {
        "tenant": "intl",
        "subject": "alice",
        "key": "b",
        "deleted_versions": 1,
    }
    assert alice.json("stat", "intl", "alice", "b")["version"] == 1
    removed = alice.json("rm", "intl", "alice", "b")
    assert (removed["key"], removed["deleted_versions"]) == ("b", 1)
    report = alice.json("gc", "--grace", "0")
    assert (report["versions"], report["shards"]) == (2, 12)
    assert "no object" in alice.fails(1, "stat", "intl", "alice", "b")

    pending = alice.fails(1, "forget", "intl", "alice")
    approval = pending.split("--approval ")[-1]
    assert "needs approval (invariant:forget-approval)" in pending
    tokens = {
        ident: alice.ok(
            "principal", "add", ident, "--tenant", "intl", "--kind", kind, "--location", "US"
        )
        .decode()
        .strip()
        for ident, kind in (("dpo", "employee"), ("partner-officer", "partner-auditor"))
    }
    for ident, token in tokens.items():
        key = alice.config.parent / "approvers" / f"{ident}.skey"
        alice.ok("--token", token, "approval", "approve", approval, "--signing-key", str(key))
    forgotten = alice.json("--approval", approval, "forget", "intl", "alice")
    assert (forgotten["versions_deleted"], forgotten["shards_removed"]) == (2, 12)
    assert "forgotten" in alice.fails(1, "get", "intl", "alice", "a/1")
    assert sum(n["shards"] for n in alice.json("nodes")["nodes"]) == 0


def test_nodes_warns_about_a_cell_that_cannot_lose_a_facility(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """SG's six nodes in two facilities put three shards in each, EU has five active."""

    def edit(text: str) -> str:
        text = text.replace('facility = "sg-fac-3"', 'facility = "sg-fac-1"')
        return text.replace('path = "nodes/EU/eu-n6"', 'path = "nodes/EU/eu-n6"\nstate = "down"')

    cli = Cli(make_deployment(tmp_path / "deploy", edit=edit), capsysbinary)
    shutil.rmtree(tmp_path / "deploy" / "nodes" / "EU" / "eu-n6")  # down and gone: no alarm
    code, out, err = cli("nodes", "--json")
    listed = {node["id"]: node for node in json.loads(out)["nodes"]}
    assert code == 0 and len(listed) == 18
    assert (
        listed["eu-n6"]["state"] == "down" and "no such directory" in listed["eu-n6"]["unavailable"]
    )
    assert err.splitlines() == [
        "warning: cell EU has 5 active node(s), a stripe needs 6: its puts are refused; "
        "add nodes or bring them back",
        "warning: cell SG cannot keep a 4+2 stripe to 2 shards per facility (6 active nodes "
        "in 2 facilities, 2 shard(s) over): losing a facility can lose objects; add active "
        "nodes in other facilities",
    ]
    code, out, err = cli("nodes")
    assert code == 0 and b"unavailable" not in out and err.count("warning:") == 2
    healthy = Cli(make_deployment(tmp_path / "healthy"), capsysbinary)
    assert healthy("nodes")[2] == ""


def test_nodes_counts_an_unavailable_node_out_of_its_cell(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A node that cannot be opened is down for placement: US's puts then go over the
    facility cap (a spare in us-fac-1, us-n3 of us-fac-3 gone), SG's are refused. The
    warnings counted the config's active nodes and said nothing of either."""

    def edit(text: str) -> str:
        return text + (
            '\n[[nodes]]\nid = "us-n7"\njurisdiction = "US"\nfacility = "us-fac-1"\n'
            'backend = "local"\npack_limit = 0\npath = "nodes/US/us-n7"\n'
        )

    cli = Cli(make_deployment(tmp_path / "deploy", edit=edit), capsysbinary)
    (tmp_path / "deploy" / "nodes" / "US" / "us-n7").mkdir()
    for gone in ("US/us-n3", "SG/sg-n2"):  # active in the config, their disks not mounted
        shutil.rmtree(tmp_path / "deploy" / "nodes" / gone)
    code, _, err = cli("nodes")
    assert code == 1
    assert [line for line in err.splitlines() if "cell" in line] == [
        "warning: cell SG has 5 active node(s) (and 1 unavailable), a stripe needs 6: its "
        "puts are refused; add nodes or bring them back",
        "warning: cell US cannot keep a 4+2 stripe to 2 shards per facility (6 active nodes "
        "in 3 facilities, 1 shard(s) over; and 1 unavailable): losing a facility can lose "
        "objects; add active nodes in other facilities",
    ]


def test_human_output_goes_to_stderr_and_tables_to_stdout(alice: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"hello")
    code, out, err = alice("put", "intl", "alice", "k", str(source))
    assert code == 0 and out == b""
    assert "stored intl/alice/k version 1 (5 bytes, 1 segment)" in err  # not "1 segments"
    for command in (["ls", "intl", "alice"], ["stat", "intl", "alice", "k"], ["nodes"]):
        code, out, err = alice(*command)
        assert code == 0 and out, command
    code, out, _ = alice("where", "intl", "alice", "k")
    assert code == 0 and b"us-" in out


@pytest.fixture
def crippled(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    """CN declared without nodes; three US nodes down."""

    def edit(text: str) -> str:
        text = text.replace(
            "[jurisdictions.EU]\n", '[jurisdictions.CN]\nname = "China"\n\n[jurisdictions.EU]\n'
        )
        for number in (1, 2, 3):
            text = text.replace(f'id = "us-n{number}"\n', f'id = "us-n{number}"\nstate = "down"\n')
        return text

    return Cli(make_deployment(tmp_path / "deploy", edit=edit), capsysbinary)


def test_exit_codes_and_one_line_errors(crippled: Cli, tmp_path: Path) -> None:
    cli = crippled
    source = tmp_path / "in.bin"
    source.write_bytes(b"data")
    cli.ok("subject", "add", "intl", "li", "-j", "CN")
    cli.ok("subject", "add", "intl", "amy", "-j", "US")
    cli.ok("subject", "add", "intl", "sg", "-j", "SG")
    # 1: refused, too few nodes, not found
    assert "no storage nodes in jurisdiction CN" in cli.fails(
        1, "put", "intl", "li", "k", str(source)
    )
    assert "3 active nodes of 6" in cli.fails(1, "put", "intl", "amy", "k", str(source))
    assert "no object" in cli.fails(1, "get", "intl", "sg", "missing")
    assert "no subject" in cli.fails(1, "ls", "intl", "nobody")
    # 2: bad input
    assert "invalid object key" in cli.fails(2, "put", "intl", "sg", "../etc/passwd", str(source))
    assert "invalid object key" in cli.fails(2, "get", "intl", "sg", "/abs")
    assert "invalid subject id" in cli.fails(2, "ls", "intl", "a/b")
    assert "unknown tenant" in cli.fails(2, "ls", "nope", "sg")
    assert "unknown jurisdiction" in cli.fails(2, "subject", "add", "intl", "x", "-j", "JP")
    assert "cannot read" in cli.fails(2, "put", "intl", "sg", "k", str(tmp_path / "missing"))
    assert "cannot read" in cli.fails(2, "put", "intl", "sg", "k", str(tmp_path))
    assert "--grace" in cli.fails(2, "gc", "--grace", "-1")
    assert "limit" in cli.fails(2, "ls", "intl", "sg", "--limit", "0")
    # nothing was stored by any refusal
    assert sum(n["shards"] for n in cli.json("nodes")["nodes"]) == 0


def test_bad_config_is_exit_2_naming_the_key(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    path = make_deployment(tmp_path / "deploy", edit=lambda t: t.replace("k = 4", 'k = "4"'))
    line = Cli(path, capsysbinary).fails(2, "nodes")
    assert "storage.k: expected int, got str" in line
    missing = Cli(tmp_path / "nope.toml", capsysbinary)
    assert "not found" in missing.fails(2, "nodes")


def test_memory_backends_are_refused_by_commands_that_would_lose_what_they_store(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # a put said "stored", and the next command found none of its shards
    path = make_deployment(tmp_path / "deploy")
    text = path.read_text()
    node = text.replace('backend = "local"', 'backend = "memory"', 1)
    assert node != text
    custodian = text.replace('backend = "keyring"', 'backend = "memory"')
    assert custodian != text
    for edited, key in ((node, "nodes us-n1.backend"), (custodian, "custodian.backend")):
        path.write_text(edited)
        line = Cli(path, capsysbinary).fails(2, "subject", "add", "intl", "alice", "-j", "US")
        assert f"{key} is 'memory', which keeps nothing after this command" in line
    assert not (tmp_path / "deploy" / "state").exists() or not any(
        (tmp_path / "deploy" / "state").rglob("*.sqlite")
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["put", "intl"],
        ["ls", "intl", "alice", "--bogus"],
        ["ls", "intl", "alice", "--limit", "many"],
        ["get", "intl", "alice", "k", "--version", "x"],
    ],
)
def test_bad_usage_is_exit_2_without_traceback(cli: Cli, argv: list[str]) -> None:
    code, _out, err = cli(*argv)
    assert code == 2
    assert "Traceback" not in err
    assert "Error" in err or "error" in err


def test_help_is_exit_0(cli: Cli) -> None:
    code, out, _ = cli("--help", config=False)
    assert code == 0
    for command in ("put", "get", "ls", "stat", "rm", "versions", "where", "nodes", "gc", "forget"):
        assert command.encode() in out


# real processes ------------------------------------------------------------------


def test_python_dash_m_runs_the_same_cli(tmp_path: Path) -> None:
    """`python -m shardvault` said there was no __main__ module (found in review)."""
    config = make_deployment(tmp_path / "deploy")
    done = subprocess.run(
        [sys.executable, "-m", "shardvault", "--config", str(config), "nodes", "--json"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["nodes"]) == 18
    missing = subprocess.run(
        [sys.executable, "-m", "shardvault", "--config", str(tmp_path / "none.toml"), "nodes"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BINARY), *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_installed_command_end_to_end(tmp_path: Path) -> None:
    assert BINARY.exists()
    demo = tmp_path / "demo"
    done = run("init", "--demo", str(demo))
    assert done.returncode == 0, done.stderr
    config = str(demo / "shardvault.toml")
    assert run("--config", config, "subject", "add", "intl", "alice", "-j", "US").returncode == 0
    data = os.urandom(100_000)
    done = run("--config", config, "put", "intl", "alice", "k", "-", "--json", stdin=data)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["size"] == len(data)
    done = run("--config", config, "get", "intl", "alice", "k")
    assert (done.returncode, done.stdout) == (0, data)
    done = run("--config", config, "get", "intl", "alice", "../k")
    assert done.returncode == 2
    assert done.stderr.decode().strip().startswith("error: invalid object key")
    assert b"Traceback" not in done.stderr
    done = run("--config", config, "get", "intl", "alice", "missing")
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines() == ["error: no object intl/alice/missing"]


def test_commands_are_registered_once_however_often_main_runs(cli: Cli) -> None:
    from shardvault.cli.app import app

    for _ in range(3):
        cli("--help", config=False)
    names = [command.name or command.callback.__name__ for command in app.registered_commands]  # type: ignore[union-attr]
    assert len(names) == len(set(names))
    groups = [group.name for group in app.registered_groups]
    assert len(groups) == len(set(groups)) == 7


def test_where_lists_the_shards_of_the_version_it_names(
    alice: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`where` asks stat for the version, then where for the shards: a put in between
    printed one version's number over another's shards (here 1 segment over 3)."""
    source = tmp_path / "small"
    source.write_bytes(b"x")
    alice.ok("put", "intl", "alice", "w", str(source))
    real_stat = Vault.stat

    def stat_then_put(vault: Vault, *args: Any, **kwargs: Any) -> Any:
        info = real_stat(vault, *args, **kwargs)
        vault.put(ObjectRef("intl", "alice", "w"), os.urandom(2 * SEGMENT + 1))
        return info

    monkeypatch.setattr(Vault, "stat", stat_then_put)
    where = alice.json("where", "intl", "alice", "w")
    assert where["version"] == 1
    assert {s["segment"] for s in where["shards"]} == {0}


def test_where_tells_a_node_gone_from_the_config_from_a_facility_named_unknown(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A shard on a node the config no longer lists showed the facility `unknown`, as a
    shard on a configured node of a facility named so shows it."""
    alice = alice_holding_k(Cli(make_deployment(tmp_path / "deploy"), capsysbinary), tmp_path)
    text = alice.config.read_text()
    start = text.index('id = "us-n2"')
    block = text[text.rindex("[[nodes]]", 0, start) : text.index("[[nodes]]", start)]
    text = text.replace(block, "").replace('facility = "us-fac-1"', 'facility = "unknown"', 1)
    alice.config.write_text(text)
    shards = {s["node"]: s for s in alice.json("where", "intl", "alice", "k")["shards"]}
    assert (shards["us-n1"]["facility"], shards["us-n1"]["in_config"]) == ("unknown", True)
    assert (shards["us-n2"]["facility"], shards["us-n2"]["in_config"]) == ("unknown", False)
    lines = alice.ok("where", "intl", "alice", "k").decode().splitlines()
    rows = {node: next(line for line in lines if f" {node} " in line) for node in shards}
    assert "(node not in the config)" in rows["us-n2"] and "unknown" not in rows["us-n2"]
    assert "unknown" in rows["us-n1"] and "not in the config" not in rows["us-n1"]


# every command that reads something can print it as JSON for a script (the issue
# "--json on every command that reads"); these write, or print JSON otherwise
WRITES = {
    "init": "writes the deployment's files; says where on stderr",
    "get": "writes the object's bytes",
    "principal revoke": "revokes; says so on stderr",
}
JSON_OTHERWISE = {
    "scan": "--format json (or sarif)",
    "report transparency": "--format json (or csv)",
    "audit prove-inclusion": "always JSON",
    "audit prove-consistency": "always JSON",
}


def _leaf_commands() -> dict[str, Any]:
    import typer

    from shardvault.cli import app as cli_app

    cli_app._register_commands()
    root = typer.main.get_command(cli_app.app)
    leaves: dict[str, Any] = {}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        for sub, leaf in (subcommands or {"": command}).items():
            leaves[f"{name} {sub}".strip()] = leaf
    return leaves


def test_every_command_that_reads_takes_json() -> None:
    leaves = _leaf_commands()
    assert set(WRITES) | set(JSON_OTHERWISE) <= set(leaves)  # no stale exemption
    options = {path: {o for p in c.params for o in p.opts} for path, c in leaves.items()}
    missing = sorted(
        p for p in leaves if p not in WRITES | JSON_OTHERWISE and "--json" not in options[p]
    )
    assert missing == []
    for path, how in JSON_OTHERWISE.items():
        assert "--json" not in options[path] and ("--format" in options[path]) == how.startswith(
            "--format"
        )


def test_every_command_summary_is_one_line() -> None:
    """The command lists of `--help` print a summary's line breaks as they are (typer's
    rich mode), so a summary wrapped in its docstring showed broken mid-sentence."""
    import inspect

    broken = []
    for path, command in _leaf_commands().items():
        summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
        if not summary or "\n" in summary:
            broken.append(path)
    assert broken == []
