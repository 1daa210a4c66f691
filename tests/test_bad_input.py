"""Bad input is refused with one clear line: keys, subject ids, names, a full disk."""

from __future__ import annotations

import io
import os
import posixpath
import re
import subprocess
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SEGMENT, files_under, make_deployment, shard_paths
from shardvault.audit.note import signer_from_skey
from shardvault.config import load
from shardvault.errors import ConfigError, InvalidInput, NotFound, StorageError, Unavailable
from shardvault.governance.approval_record import approval_cell
from shardvault.governance.heads import format_skey
from shardvault.model import (
    LOOK_ALIKE_SEPARATORS,
    MAX_KEY_BYTES,
    ObjectRef,
    facility_name,
    jurisdiction_code,
    node_id,
    object_key,
    shown,
    subject_id,
    tenant_name,
    token,
)
from shardvault.vault import Vault, writing

BAD_KEYS = {
    "empty": "",
    "overlong": "a" * (MAX_KEY_BYTES + 1),
    "overlong-multibyte": "é" * 513,
    "parent": "../etc/passwd",
    "inner-parent": "photos/../../etc/passwd",
    "just-dots": "..",
    "dot-segment": "photos/./cat",
    "absolute": "/etc/passwd",
    "trailing-slash": "photos/",
    "double-slash": "photos//cat",
    "nul": "cat\x00.jpg",
    "newline": "cat\n.jpg",
    "tab": "cat\t.jpg",
    "del": "cat\x7f",
    "backslash": "photos\\cat.jpg",
    "windows-traversal": "..\\..\\windows",
    "non-nfc": "cafe\u0301",
    "zero-width-space": "ca\u200bt",
    "zero-width-joiner": "ca\u200dt",
    "bom": "\ufeffcat",
    "bidi-override": "cat\u202egpj.exe",
    "bidi-isolate": "cat\u2066x",
    "line-separator": "a\u2028b",
    "nbsp": "a\u00a0b",
    "lone-surrogate": "a\ud800b",
    "private-use": "a\ue000b",
    "not-a-string": 42,
}

GOOD_KEYS = [
    "a",
    "a" * MAX_KEY_BYTES,
    "é" * (MAX_KEY_BYTES // 2),
    "photos/2024/cat.jpg",
    "with space.txt",
    "a b/c d",
    "...",
    "a..b/c..",
    ".hidden",
    "日本語/ファイル.txt",
    "café",
    "emoji-😀",
]


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_object_keys_are_refused_with_one_line(key: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        object_key(key)
    message = str(caught.value)
    assert message.startswith("invalid object key")
    assert "\n" not in message and len(message) < 250, "an overlong key is named, not echoed"
    with pytest.raises(InvalidInput):
        ObjectRef("intl", "alice", key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_object_keys_are_accepted(key: str) -> None:
    assert object_key(key) == key
    assert str(ObjectRef("intl", "alice", key)) == f"intl/alice/{key}"


@given(st.text(max_size=80) | st.text(alphabet="./\\a\x00\u200b\u202e\u0301", max_size=12))
def test_any_text_is_a_safe_key_or_refused_cleanly(key: str) -> None:
    try:
        accepted = object_key(key)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
        return
    assert accepted == key
    assert posixpath.normpath(key) == key and not posixpath.isabs(key)
    assert ".." not in key.split("/") and "\\" not in key
    assert unicodedata.normalize("NFC", key) == key
    assert all(unicodedata.category(c)[0] not in "CZ" or c == " " for c in key)
    assert len(key.encode()) <= MAX_KEY_BYTES


BAD_SUBJECTS = [
    "",
    "-alice",
    ".alice",
    "a" * 129,
    "a" * 100_000,
    "al/ice",
    "../alice",
    "al ice",
    "alice\x00",
    "alice\n",
    "alicé",
    "al\u200bice",
    "\u202ealice",
    "ALICE\\",
    None,
]


@pytest.mark.parametrize("subject", BAD_SUBJECTS)
def test_bad_subject_ids_are_refused(subject: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        subject_id(subject)
    assert str(caught.value).startswith("invalid subject id")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 250


@pytest.mark.parametrize("subject", ["a", "a" * 128, "alice@example.com", "u+1_2.3-4", "0"])
def test_good_subject_ids(subject: str) -> None:
    assert subject_id(subject) == subject


@given(st.text(max_size=140))
def test_any_text_is_a_subject_id_or_refused_cleanly(subject: str) -> None:
    try:
        subject_id(subject)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
        return
    assert subject.isascii() and "/" not in subject and ".." not in subject[:2]
    assert len(subject) in range(1, 129)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (tenant_name, "Intl"),
        (tenant_name, "../intl"),
        (tenant_name, ""),
        (jurisdiction_code, "us"),
        (jurisdiction_code, "U"),
        (jurisdiction_code, "US/../SG"),
        (node_id, "../n1"),
        (node_id, "N1"),
        (tenant_name, "x" * 100_000),
        (jurisdiction_code, "X" * 100_000),
    ],
)
def test_bad_names_are_refused(check: object, value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(value)  # type: ignore[operator]
    assert len(str(caught.value)) < 250, "an overlong name is named, not echoed"


TENANT_RULE = "1-63 lower-case ASCII letters, digits and - (a letter first)"
JURISDICTION_RULE = "use an upper-case code of 2-8 ASCII letters, such as US or EU"
NODE_ID_RULE = "1-63 lower-case ASCII letters, digits and . _ - (not first)"
FACILITY_RULE = "1-63 ASCII letters, digits and . _ - (not first)"
TOKEN_RULE = "1-128 ASCII letters, digits and . _ @ : / - (not first)"


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (tenant_name, "Intl", f"invalid tenant 'Intl': {TENANT_RULE}"),
        (jurisdiction_code, 7, f"invalid jurisdiction 7: {JURISDICTION_RULE}"),
        (node_id, "N1", f"invalid node id 'N1': {NODE_ID_RULE}"),
        (facility_name, "-f", f"invalid facility '-f': {FACILITY_RULE}"),
        (
            subject_id,
            None,
            "invalid subject id None: 1-128 ASCII letters, digits and . _ @ + - (not first)",
        ),
        (object_key, "a//b", "invalid object key 'a//b': empty, '.' or '..' path segment"),
        (object_key, "a/./b", "invalid object key 'a/./b': empty, '.' or '..' path segment"),
        (object_key, "../b", "invalid object key '../b': empty, '.' or '..' path segment"),
    ],
)
def test_each_check_says_what_it_refused_and_why(
    check: object, value: object, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(value)  # type: ignore[operator]
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("check", "value", "rule"),
    [
        (tenant_name, "t" * 64, TENANT_RULE),
        (tenant_name, "1intl", TENANT_RULE),
        (jurisdiction_code, "USAAAAAAA", JURISDICTION_RULE),
        (jurisdiction_code, "U", JURISDICTION_RULE),
        (node_id, "n" * 64, NODE_ID_RULE),
        (node_id, "-n1", NODE_ID_RULE),
        (facility_name, "f" * 64, FACILITY_RULE),
        (lambda value: token(value, "purpose"), "p" * 129, TOKEN_RULE),
        (lambda value: token(value, "purpose"), "-why", TOKEN_RULE),
    ],
    ids=[
        "tenant-long", "tenant-digit-first", "jurisdiction-long", "jurisdiction-short",
        "node-long", "node-dash-first", "facility-long", "token-long", "token-dash-first",
    ],
)  # fmt: skip
def test_a_name_of_allowed_characters_refused_for_its_length_or_first_says_that_rule(
    check: object, value: str, rule: str
) -> None:
    """'ppp...' (129 letters) was refused as a purpose with 'letters, digits and . _ @ :
    / - only', which it is: the hint named the characters and not the length or the
    first character the value broke. Each hint now states the whole rule."""
    with pytest.raises(InvalidInput) as caught:
        check(value)  # type: ignore[operator]
    assert str(caught.value).endswith(f": {rule}")


def test_an_overlong_unknown_tenant_or_approval_id_is_named_not_echoed(vault: Vault) -> None:
    with pytest.raises(InvalidInput, match=r"unknown tenant 'x+… \(100000 characters\)"):
        vault.config.tenant("x" * 100_000)
    with pytest.raises(InvalidInput, match=r"invalid approval id") as caught:
        approval_cell("a" * 100_000)
    assert len(str(caught.value)) < 250


SPACE_EDGED_KEYS = ["   ", " cat.jpg", "cat.jpg ", "photos/ /cat", "photos /cat"]


@pytest.mark.parametrize("key", SPACE_EDGED_KEYS)
def test_a_new_key_may_not_have_a_space_edged_segment(vault: Vault, key: str) -> None:
    """Keys differing only by spaces nobody sees are refused when written; one stored
    before the rule (let through here) stays readable, listable, removable and
    collectable: a row read back must never fail the check a write makes."""
    vault.register_subject("intl", "alice", "US")
    with pytest.raises(InvalidInput, match="starts or ends with a space"):
        vault.put(ObjectRef("intl", "alice", key), b"data")
    assert object_key(key) == key
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writing, "new_object_key", lambda key: key)  # as the code before stored it
        vault.put(ObjectRef("intl", "alice", key), b"data")
    ref = ObjectRef("intl", "alice", key)
    assert vault.get(ref) == b"data"
    assert [item.ref.key for item in vault.list("intl", "alice").items] == [key]
    assert vault.delete(ref) is not None
    vault.gc(0)


INVISIBLE_LETTER_OR_MARK_KEYS = {  # Default_Ignorable_Code_Point, outside categories C and Z
    "hangul-filler": "ca\u3164t",
    "halfwidth-hangul-filler": "ca\uffa0t",
    "hangul-choseong-filler": "\u115fcat",
    "combining-grapheme-joiner": "ca\u034ft",
    "khmer-inherent-vowel": "ca\u17b4t",
    "mongolian-variation-selector": "ca\u180bt",
    "variation-selector": "ca\ufe00t",
    "variation-selector-supplement": "ca\U000e0100t",
}


@pytest.mark.parametrize(
    "key", INVISIBLE_LETTER_OR_MARK_KEYS.values(), ids=INVISIBLE_LETTER_OR_MARK_KEYS.keys()
)
def test_a_new_key_may_not_hold_an_invisible_letter_or_mark(vault: Vault, key: str) -> None:
    """'ca\u3164t' shows as 'cat' (or 'ca t') yet is another key: invisible, as a
    zero-width space is, though Unicode files it as a letter or mark. Refused when
    written; a key stored before the rule stays readable (every get checks the key)."""
    vault.register_subject("intl", "alice", "US")
    with pytest.raises(InvalidInput, match=r"invisible character U\+"):
        vault.put(ObjectRef("intl", "alice", key), b"data")
    assert object_key(key) == key


def stored_before_the_rule_stays_usable(vault: Vault, ref: ObjectRef) -> None:
    """REF, refused as a new key, was not written; stored as the code before a rule
    stored it, it is read, listed and deleted as any key is (every get checks the key)."""
    assert vault.list(ref.tenant, ref.subject).items == []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writing, "new_object_key", lambda key: key)  # as the code before stored it
        vault.put(ref, b"data")
    assert vault.get(ref) == b"data"
    assert [item.ref.key for item in vault.list(ref.tenant, ref.subject).items] == [ref.key]
    assert vault.delete(ref) is not None


@pytest.mark.parametrize(
    ("char", "passes_for"), LOOK_ALIKE_SEPARATORS.items(), ids=[
        unicodedata.name(char).lower().replace(" ", "-") for char in LOOK_ALIKE_SEPARATORS
    ]
)  # fmt: skip
def test_a_new_key_may_not_hold_a_look_alike_of_a_slash(
    vault: Vault, char: str, passes_for: str
) -> None:
    """'photos\u22152024' lists beside 'photos/2024' and looks the same, yet is one
    segment. Refused when written, naming the character, its name and where it is; a
    key stored before the rule stays readable, listable and removable."""
    vault.register_subject("intl", "alice", "US")
    key = f"photos{char}2024/a"
    ref = ObjectRef("intl", "alice", key)
    with pytest.raises(InvalidInput) as caught:
        vault.put(ref, b"data")
    assert str(caught.value).endswith(
        f": character 7 is U+{ord(char):04X} {unicodedata.name(char)}, which looks like "
        f"'{passes_for}' but is not: use '/' to separate path segments"
    )
    stored_before_the_rule_stays_usable(vault, ref)
    # Katakana NO and the ideographs U+4E3F, U+4E36 look like them too, but are letters
    # Japanese and Chinese keys need: not refused
    letters = ObjectRef("intl", "alice", "photos/2024/\u30ce\u30fc\u30c8/\u4e3f\u4e36")
    vault.put(letters, b"kept")
    assert vault.get(letters) == b"kept"


@pytest.mark.parametrize(
    ("segment", "looks_like"),
    [
        ("\uff0e\uff0e", ".."),  # FULLWIDTH FULL STOP: an East Asian input method's '.'
        ("\uff0e", "."),
        (".\uff0e", ".."),
        ("\u2025", ".."),  # TWO DOT LEADER
        ("\u2024", "."),  # ONE DOT LEADER
        ("\ufe52\ufe52", ".."),  # SMALL FULL STOP
    ],
    ids=["fullwidth-two", "fullwidth-one", "mixed", "two-dot-leader", "one-dot-leader", "small"],
)
def test_a_new_key_may_not_hold_a_segment_of_look_alike_dots(
    vault: Vault, segment: str, looks_like: str
) -> None:
    """'photos/\uff0e\uff0e/x' lists as 'photos/../x' would, a key no one may write,
    and is '..' to whatever folds it to compatibility form (NFKC) on its way to a file
    name. Refused when written, naming the segment; a key stored before the rule stays
    readable, listable and removable, and a dot look-alike within a name is kept."""
    vault.register_subject("intl", "alice", "US")
    key = f"photos/{segment}/x"
    ref = ObjectRef("intl", "alice", key)
    with pytest.raises(InvalidInput) as caught:
        vault.put(ref, b"data")
    assert str(caught.value) == (
        f"invalid object key {key!a}: path segment 2, {segment!a}, looks like "
        f"'{looks_like}', which no path segment may be: give it a name, not dots"
    )
    stored_before_the_rule_stays_usable(vault, ref)
    for kept in (
        f"photos/a{segment}b",
        "photos/\u2026",
        "\u0660/\u0660\u0660",
    ):  # ellipsis, Arabic 0
        vault.put(ObjectRef("intl", "alice", kept), b"kept")
        assert vault.get(ObjectRef("intl", "alice", kept)) == b"kept"


def test_vault_refuses_bad_input_before_touching_anything(vault: Vault, config_path: Path) -> None:
    base = config_path.parent
    before = files_under(base)
    with pytest.raises(InvalidInput, match="invalid subject id"):
        vault.register_subject("intl", "../alice", "US")
    with pytest.raises(InvalidInput, match="unknown tenant"):
        vault.register_subject("evil", "alice", "US")
    with pytest.raises(InvalidInput, match="unknown jurisdiction"):
        vault.register_subject("intl", "alice", "ZZ")
    with pytest.raises(InvalidInput, match="invalid subject id"):
        vault.list("intl", "a/../b")
    with pytest.raises(InvalidInput, match="unknown tenant"):
        vault.subject("evil", "alice")
    assert files_under(base) == before


def test_put_of_text_rather_than_bytes_is_bad_input(vault: Vault, tmp_path: Path) -> None:
    """A str, or a file opened without 'b', escaped put as an AttributeError (no
    `readinto`), after its write was decided and audited: now `InvalidInput`, before."""
    vault.register_subject("intl", "alice", "US")
    ref = ObjectRef("intl", "alice", "k")
    (tmp_path / "note.txt").write_text("hello")
    with (tmp_path / "note.txt").open() as text_file:
        for data in ("hello", text_file):
            with pytest.raises(InvalidInput, match="put needs bytes or a binary stream"):
                vault.put(ref, data)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        vault.stat(ref)


@pytest.mark.parametrize("version", [0, -1, 2**63, 10**20])
def test_out_of_range_versions_are_bad_input(vault: Vault, version: int) -> None:
    # SQLite cannot even hold the larger ones: an OverflowError, before
    vault.register_subject("intl", "alice", "US")
    ref = ObjectRef("intl", "alice", "k")
    vault.put(ref, b"kept")
    for call in (vault.get, vault.stat, vault.where, vault.delete, vault.open_read):
        with pytest.raises(InvalidInput, match=rf"version {version} is out of range: .* 1 to "):
            call(ref, version)  # type: ignore[operator]
    assert vault.get(ref, 1) == b"kept"


# a full disk -------------------------------------------------------------------


@pytest.fixture
def small_disk_vault(tmp_path: Path) -> Iterator[tuple[Vault, Path]]:
    """The six US node directories live on a 2 MiB tmpfs."""
    path = make_deployment(tmp_path / "deploy")
    us = path.parent / "nodes" / "US"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(us)], check=True)
    try:
        for number in range(1, 7):
            (us / f"us-n{number}").mkdir()
        with Vault.open(load(path)) as vault:
            yield vault, path.parent
    finally:
        # a process-wide handle (the group-sync registry) may still hold the mount:
        # detach it lazily then, so no test run leaves a mount behind
        if subprocess.run(["umount", str(us)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(us)], check=True)


def outside_nodes(base: Path) -> set[Path]:
    return {p for p in files_under(base) if "nodes" not in p.relative_to(base).parts}


def test_full_disk_refuses_the_write_and_keeps_the_old_version(
    small_disk_vault: tuple[Vault, Path],
) -> None:
    vault, base = small_disk_vault
    vault.register_subject("intl", "alice", "US")
    ref = ObjectRef("intl", "alice", "big")
    old = os.urandom(SEGMENT + 100)
    vault.put(ref, old)
    on_nodes, elsewhere = files_under(base / "nodes"), outside_nodes(base)
    assert on_nodes == set(shard_paths(vault, ref))

    with pytest.raises(StorageError, match="disk full") as caught:
        vault.put(ref, io.BytesIO(os.urandom(8 << 20)))
    assert isinstance(caught.value, Unavailable)
    assert "\n" not in str(caught.value)
    # each full node named, then what to do, once
    assert re.search(r": make room on (its disk|their disks) and retry$", str(caught.value))
    assert str(caught.value).count("make room") == 1

    assert files_under(base / "nodes") == on_nodes  # no shard, no temp file left
    assert outside_nodes(base) == elsewhere
    assert vault.cells["US"].catalog.claim_collectable(float("inf")) == []
    assert vault.get(ref) == old
    assert [info.version for info in vault.versions(ref)] == [1]
    # the space was given back: a write that fits succeeds
    assert vault.put(ref, b"small").version == 2
    assert vault.get(ref) == b"small"


def test_full_state_disk_is_named_as_such(tmp_path: Path) -> None:
    # SQLite reports a full disk under WAL as a mere "disk I/O error"
    path = make_deployment(tmp_path / "deploy")
    state = path.parent / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    try:
        (state / "filler").write_bytes(bytes(1024 * 1024 - 60 * 1024))
        with pytest.raises(Unavailable, match=r"\(its disk has \d+ KiB free: make room\)$"):
            Vault.open(load(path)).close()
    finally:
        if subprocess.run(["umount", str(state)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], check=True)


def test_state_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    path = make_deployment(tmp_path / "deploy")
    (path.parent / "state").write_text("")
    with pytest.raises(ConfigError, match=r"storage\.state_dir .* is not a directory"):
        Vault.open(load(path))


class FailingSource(io.RawIOBase):
    """A client stream that breaks after a few segments."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise ConnectionResetError("client went away")
        n = min(len(buffer), self.left)
        buffer[:n] = os.urandom(n)
        self.left -= n
        return n


def test_broken_source_stream_leaves_nothing(
    vault: Vault, alice: ObjectRef, config_path: Path
) -> None:
    vault.put(alice, b"previous")
    before = files_under(config_path.parent / "nodes")
    with pytest.raises(ConnectionResetError):
        vault.put(alice, FailingSource(3 * SEGMENT + 10))  # type: ignore[arg-type]
    assert files_under(config_path.parent / "nodes") == before
    assert vault.cells["US"].catalog.claim_collectable(float("inf")) == []
    assert vault.get(alice) == b"previous"


def test_overlong_or_multi_line_names_in_keys_and_policies_are_named_not_echoed() -> None:
    """A signing key's name and id, and a principal id, were repeated whole: 100,000
    characters, or a newline that made a second, forged `error:` line."""
    seed = bytes(32)
    good = format_skey("cell", 1, seed)
    _, _, name, key_id, blob = good.split("+")
    for skey in (
        f"PRIVATE+KEY+{'n' * 100_000}+{key_id}+{blob}",
        f"PRIVATE+KEY+{name}+{'0' * 100_000}+{blob}",
        f"PRIVATE+KEY+{name}+00\nerror: forged+{blob}",
    ):
        with pytest.raises(InvalidInput) as caught:
            signer_from_skey(skey)
        assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        token("p" * 100_000 + " ", "principal id")
    assert len(str(caught.value)) < 250


def test_a_byte_not_utf8_nested_in_a_list_or_dict_is_shown_as_the_byte() -> None:
    # only a string's repr was rewritten: a list's or dict's strings kept the surrogate,
    # ['a\udcff'], where a string alone and all output write a\xff
    name = os.fsdecode(b"a\xff")
    assert shown([name, "\\udcff", "\x85"]) == "['a\\xff', '\\\\udcff', '\\u0085']"
    assert shown({name: (name,)}) == "{'a\\xff': ('a\\xff',)}"
    assert shown([b"\xff"]) == "[b'\\xff']"  # a byte already, not a character
