"""gc's report of the packed shard records its compaction kept though they failed their
checksum: a warning and `damaged` in --json, and the damage queued for repair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import Cli

from shardvault.nodes.pack_records import CRC, FILE_HEADER, RECORD


def test_gc_names_a_packed_shard_record_failing_its_checksum_and_queues_it(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    demo = tmp_path / "demo"
    cli = Cli(demo / "shardvault.toml", capsysbinary)
    cli.ok("init", "--demo", str(demo))
    cli.ok("subject", "add", "intl", "alice", "--jurisdiction", "US")
    source = tmp_path / "in.txt"
    source.write_bytes(b"payload\n")
    cli.ok("put", "intl", "alice", "k", str(source))
    (pack,) = (demo / "nodes" / "US" / "us-n1" / "packs").glob("*.pack")
    raw = bytearray(pack.read_bytes())
    _, _, _, name_length, data_length = RECORD.unpack_from(raw, len(FILE_HEADER))
    crc = len(FILE_HEADER) + RECORD.size + name_length + data_length
    assert len(raw) == crc + CRC.size  # the pack's one record: k's shard
    raw[crc] ^= 0x01
    pack.write_bytes(bytes(raw))
    code, out, err = cli("gc", "--grace", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["damaged"] == 1
    (line,) = err.strip().splitlines()
    assert line == (
        "warning: 1 packed shard record(s) failed their checksum: queued for repair; "
        "run 'shardvault repair'"
    )
    assert cli.ok("get", "intl", "alice", "k") == b"payload\n"
    repaired = cli.json("repair")  # the queue: the shard's blocks all match, nothing to do
    assert repaired["versions"] == 1 and repaired["rebuilt"] == 0
    code, out, err = cli("gc", "--grace", "0")
    assert code == 0 and "warning" not in err, err  # named once: the copy is whole
