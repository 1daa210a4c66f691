"""The compaction journal's format, and a journal this version cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardvault.errors import NewerFormat, StorageError
from shardvault.nodes.journal import JOURNAL, Journal, read_journal
from shardvault.nodes.localdir import LocalDirShardStore
from shardvault.nodes.port import shard_name

OLD, NEW = "0123456789abcdef.pack", "fedcba9876543210.pack"


def test_the_journal_format_is_pinned(tmp_path: Path) -> None:
    Journal([OLD], [NEW]).write(tmp_path)
    assert (tmp_path / JOURNAL).read_bytes() == (
        b'{"format":"shardvault-compaction","new":["fedcba9876543210.pack"],'
        b'"old":["0123456789abcdef.pack"],"version":1}'
    )
    assert read_journal(tmp_path) == Journal([OLD], [NEW])
    assert [p.name for p in tmp_path.iterdir()] == [JOURNAL]  # no temporary left


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (
            b'{"format":"shardvault-compaction","new":[],"old":[],"version":2}',
            NewerFormat,
            "version 2;.*upgrade shardvault",
        ),
        (
            b'{"format":"shardvault-compaction","new":[],"old":[],"version":"1"}',
            StorageError,
            "no compaction journal version this shardvault knows",
        ),
        *(
            (  # true == 1 and 1.0 == 1 in Python: either was read as a version 1 journal
                b'{"format":"shardvault-compaction","new":[],"old":[],"version":%s}' % version,
                StorageError,
                "no compaction journal version this shardvault knows",
            )
            for version in (b"true", b"1.0")
        ),
        (b'{"format":"shardvault-compa', StorageError, "is not a shardvault compaction journal"),
        (
            b'{"format":"shardvault-node","version":1}',
            StorageError,
            "is not a shardvault compaction journal",
        ),
        (
            b'{"format":"shardvault-compaction","new":[],"old":["../NODE"],"version":1}',
            StorageError,
            "names a pack that is not one",
        ),
    ],
    ids=["a newer version", "no version", "true", "1.0", "cut short", "another file", "a path"],
)
def test_a_journal_this_version_cannot_read_stops_compaction_and_deletes(
    tmp_path: Path, content: bytes, error: type[Exception], message: str
) -> None:
    """Fail closed: the packs such a journal names may hold a shard twice, and going on
    would leave a deleted one's copy whole."""
    store = LocalDirShardStore("n", tmp_path / "node")
    shard = shard_name(bytes(16), 1, 0)
    writer = store.open_writer(shard)
    writer.write(b"x" * 100)
    writer.commit()
    (tmp_path / "node" / "packs" / JOURNAL).write_bytes(content)
    with pytest.raises(error, match=message) as refused:
        store.compact()
    assert "\n" not in str(refused.value)
    with pytest.raises(error, match=message):
        store.delete(shard)
    store.close()
