"""Domain values: small frozen types that cross layers instead of bare strings.

Every constructor validates, so a value that exists is a valid one. Object keys
and subject ids are never used to build a path; they are still held to strict
rules so that a caller's mistake (a traversal attempt, an invisible character)
is reported rather than stored.
"""

from __future__ import annotations

import enum
import itertools
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from typing import NamedTuple

from shardvault.errors import InvalidInput
from shardvault.name_rules import NameRule

# shown and the rest of shown_text stay importable from here, where callers found them
from shardvault.shown_text import named as named
from shardvault.shown_text import one_line as one_line
from shardvault.shown_text import repr_escaped as repr_escaped
from shardvault.shown_text import shown as shown
from shardvault.shown_text import undecodable_escaped as undecodable_escaped
from shardvault.shown_text import undecodable_escaped_in as undecodable_escaped_in
from shardvault.slot_init import slot_init

MAX_KEY_BYTES = 1024
MAX_SUBJECT_CHARS = 128

# each check looks a name up among those its rule passed before matching it (name_rules)
_JURISDICTION = NameRule(r"[A-Z]{2,8}")
_TENANT = NameRule(r"[a-z][a-z0-9-]{0,62}")
_NODE_ID = NameRule(r"[a-z0-9][a-z0-9_.-]{0,62}")
_SUBJECT = NameRule(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_FACILITY = NameRule(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_TOKEN = NameRule(r"[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}")


def _invalid(value: object, what: str, hint: str) -> InvalidInput:
    """The error for a value its check refused. Each check tests inline and calls this
    only to fail: a call per check cost a get about 10 k instructions."""
    return InvalidInput(f"invalid {what} {shown(value)}: {hint}")


def jurisdiction_code(value: object) -> str:
    """A jurisdiction code: ISO 3166-1 alpha-2 (``US``) or a declared group (``EU``)."""
    if (type(value) is str and value in _JURISDICTION.passed) or _JURISDICTION.matches(value):
        return value
    raise _invalid(
        value, "jurisdiction", "use an upper-case code of 2-8 ASCII letters, such as US or EU"
    )


def tenant_name(value: object) -> str:
    if (type(value) is str and value in _TENANT.passed) or _TENANT.matches(value):
        return value
    raise _invalid(value, "tenant", "1-63 lower-case ASCII letters, digits and - (a letter first)")


def node_id(value: object) -> str:
    if (type(value) is str and value in _NODE_ID.passed) or _NODE_ID.matches(value):
        return value
    raise _invalid(value, "node id", "1-63 lower-case ASCII letters, digits and . _ - (not first)")


def facility_name(value: object) -> str:
    if (type(value) is str and value in _FACILITY.passed) or _FACILITY.matches(value):
        return value
    raise _invalid(value, "facility", "1-63 ASCII letters, digits and . _ - (not first)")


def token(value: object, what: str) -> str:
    """A principal id, role or purpose: short, printable, no spaces. Here, below the
    policy, so that the config checks its approvers by the rule a principal is added by."""
    if (type(value) is str and value in _TOKEN.passed) or _TOKEN.matches(value):
        return value
    raise _invalid(value, what, "1-128 ASCII letters, digits and . _ @ : / - (not first)")


def is_token(value: object) -> bool:
    """Whether `token` would take VALUE: for a party that refuses by its own rule rather
    than by `InvalidInput` (the key custodian; a raise and its catch cost it more)."""
    return (type(value) is str and value in _TOKEN.passed) or _TOKEN.matches(value)


def principal_id(value: object) -> str:
    """The rule `principal add` holds an id to, and the config its approvers."""
    return token(value, "principal id")


_SUBJECT_HINT = f"1-{MAX_SUBJECT_CHARS} ASCII letters, digits and . _ @ + - (not first)"


def subject_id(value: object) -> str:
    if (type(value) is str and value in _SUBJECT.passed) or _SUBJECT.matches(value):
        return value
    raise _invalid(value, "subject id", _SUBJECT_HINT)


def object_key(value: object) -> str:
    """Validate an object key: printable NFC text, path-like but never traversing."""
    if not isinstance(value, str):
        raise InvalidInput(f"invalid object key: it must be text (str), not {type(value).__name__}")
    if not value:
        raise InvalidInput("invalid object key: it must not be empty")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"invalid object key {shown(value)}: not valid Unicode text") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidInput(
            f"invalid object key: {len(encoded)} bytes, the limit is {MAX_KEY_BYTES}"
        )
    if not (value.isascii() and value.isprintable()):  # printable ASCII is NFC and visible
        _check_visible_nfc(value)
    if "\\" in value:
        raise InvalidInput(f"invalid object key {shown(value)}: use '/' rather than '\\'")
    if value.startswith("/") or value.endswith("/"):
        raise InvalidInput(f"invalid object key {shown(value)}: it must not start or end with '/'")
    parts = value.split("/")
    if "" in parts or "." in parts or ".." in parts:  # no generator: every get checks a key
        raise InvalidInput(f"invalid object key {shown(value)}: empty, '.' or '..' path segment")
    return value


# Unicode's Default_Ignorable_Code_Point outside categories C and Z (which `object_key`
# refuses whole): fillers, joiners and variation selectors that show as nothing
_INVISIBLE_LETTER_OR_MARK = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164\ufe00-\ufe0f\uffa0"
    "\U000e0100-\U000e01ef]"
)


# What looks like '/' or '\' and is neither, refused in a new key (`new_object_key`):
# 'photos\u22152024' lists beside 'photos/2024' and reads the same, yet is one path
# segment, not two (and '\' is refused outright, so its look-alikes would pass for a
# separator no key may hold). Unicode's confusables of '/' and '\' (UTS #39), but for
# letters of living scripts they are confused with (U+30CE KATAKANA LETTER NO, the
# ideographs U+4E3F and U+4E36, and U+3033, the upper half of vertical Japanese text's
# repeat mark: Japanese and Chinese keys need them) and the combining overlays U+0337
# and U+0338, which strike through the letter before them rather than stand between
# segments. The value is the character each passes for.
LOOK_ALIKE_SEPARATORS = {
    "\u2044": "/",  # FRACTION SLASH: typed for '/' in '1/2'
    "\u2215": "/",  # DIVISION SLASH: a mathematical '/'
    "\u29f8": "/",  # BIG SOLIDUS: a mathematical '/'
    "\u27cb": "/",  # MATHEMATICAL RISING DIAGONAL
    "\uff0f": "/",  # FULLWIDTH SOLIDUS: an East Asian input method's '/'
    "\u2571": "/",  # BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
    "\u2041": "/",  # CARET INSERTION POINT: a slash with a caret
    "\u1735": "/",  # PHILIPPINE SINGLE PUNCTUATION: drawn as a slash
    "\u2f03": "/",  # KANGXI RADICAL SLASH: a dictionary's radical, not text (U+4E3F is)
    "\u31d3": "/",  # CJK STROKE SP: a stroke's name, not text
    "\u2cc6": "/",  # COPTIC CAPITAL LETTER OLD COPTIC ESH: a dead script's, drawn as '/'
    "\U0001d23a": "/",  # GREEK INSTRUMENTAL NOTATION SYMBOL-47: musical notation
    "\u2216": "\\",  # SET MINUS: a mathematical '\'
    "\u29f5": "\\",  # REVERSE SOLIDUS OPERATOR
    "\u29f9": "\\",  # BIG REVERSE SOLIDUS
    "\u27cd": "\\",  # MATHEMATICAL FALLING DIAGONAL
    "\uff3c": "\\",  # FULLWIDTH REVERSE SOLIDUS: an East Asian input method's '\'
    "\ufe68": "\\",  # SMALL REVERSE SOLIDUS
    "\u2572": "\\",  # BOX DRAWINGS LIGHT DIAGONAL UPPER LEFT TO LOWER RIGHT
    "\u2f02": "\\",  # KANGXI RADICAL DOT: a dictionary's radical, not text (U+4E36 is)
    "\u31d4": "\\",  # CJK STROKE D: a stroke's name, not text
    "\U0001d20f": "\\",  # GREEK VOCAL NOTATION SYMBOL-16: musical notation
    "\U0001d23b": "\\",  # GREEK INSTRUMENTAL NOTATION SYMBOL-48: musical notation
}
_LOOK_ALIKE_SEPARATOR = re.compile(f"[{''.join(LOOK_ALIKE_SEPARATORS)}]")


def new_object_key(key: str) -> str:
    """A valid key (an `ObjectRef`'s) about to be written: also no segment that starts or
    ends with a space, no invisible letter or mark ('ca\\u3164t' shows as 'cat') and
    nothing that looks like a separator and is not ('a\\u2215b' shows as 'a/b'), since
    keys differing only by what nobody sees are a mistake to report; nor a segment that
    starts with a combining mark, which shows on what is before it, nor one of dots in
    another form ('\\uff0e\\uff0e' shows as '..'). Keys stored before these rules stay
    readable, listable and removable."""
    if " " in key and any(part != part.strip(" ") for part in key.split("/")):
        raise InvalidInput(
            f"invalid object key {shown(key)}: a path segment starts or ends with a space"
        )
    if key.isascii():
        return key
    if hidden := _INVISIBLE_LETTER_OR_MARK.search(key):
        raise InvalidInput(
            f"invalid object key {shown(key, escaped=True)}: it contains the invisible "
            f"character U+{ord(hidden.group()):04X}"
        )
    if (mark := _segment_leading_mark(key)) is not None:
        char = key[mark]
        raise InvalidInput(
            f"invalid object key {shown(key, escaped=True)}: character {mark + 1} is "
            f"U+{ord(char):04X} {unicodedata.name(char, 'a combining mark')}, a mark that "
            "would show on the '/' or text before it: start each path segment with a "
            "letter, digit or sign"
        )
    if posing := _LOOK_ALIKE_SEPARATOR.search(key):
        char = posing.group()
        raise InvalidInput(
            f"invalid object key {shown(key, escaped=True)}: character {posing.start() + 1} "
            f"is U+{ord(char):04X} {unicodedata.name(char)}, which looks like "
            f"'{LOOK_ALIKE_SEPARATORS[char]}' but is not: use '/' to separate path segments"
        )
    _refuse_look_alike_dots(key)
    return key


def _refuse_look_alike_dots(key: str) -> None:
    """Refuse a segment of KEY that is dots in another form ('\\uff0e\\uff0e', a Japanese
    input method's '..'): it lists as the '.' or '..' no key may hold, and is one to
    whatever folds it to compatibility form (NFKC) on its way to a file name."""
    for number, part in enumerate(key.split("/"), 1):
        if not part.isascii():
            dots = unicodedata.normalize("NFKC", part)
            if dots in (".", ".."):
                raise InvalidInput(
                    f"invalid object key {shown(key, escaped=True)}: path segment {number}, "
                    f"{shown(part, escaped=True)}, looks like '{dots}', which no path "
                    "segment may be: give it a name, not dots"
                )


def _segment_leading_mark(key: str) -> int | None:
    """Where a path segment of KEY starts with a combining mark (Unicode category M), or
    None. Such a mark has nothing of its own to sit on: 'photos/\u0301cat' shows its
    accent on the '/', and a key starting with one on what a listing prints before it."""
    start = 0
    for part in key.split("/"):
        if unicodedata.category(part[0])[0] == "M":
            return start
        start += len(part) + 1
    return None


def nfc_text(value: str, what: str) -> str:
    """VALUE, if in Unicode NFC; else `InvalidInput` showing it escaped ('e\\u0301'), where
    as typed it would look the same as its NFC form ('\\xe9')."""
    if unicodedata.normalize("NFC", value) != value:
        raise InvalidInput(
            f"invalid {what} {shown(value, escaped=True)}: normalise it to Unicode NFC first"
        )
    return value


def _check_visible_nfc(value: str) -> None:
    nfc_text(value, "object key")
    for char in value:
        category = unicodedata.category(char)
        if category[0] in "CZ" and char != " ":
            raise InvalidInput(
                f"invalid object key {shown(value)}: it contains the control or invisible "
                f"character U+{ord(char):04X}"
            )


class NodeState(enum.StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    DOWN = "down"


class DataClass(enum.StrEnum):
    PROTECTED = "protected"
    PUBLIC = "public"


# A node's capacity is its placement weight, relative to its cell's other nodes' (say
# its disk in GiB): a million to one is past any real disparity, and keeps a weight far
# from where placement's float arithmetic (placement.py) would round or overflow.
MAX_NODE_CAPACITY = 1_000_000


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A place that stores shards, and the failure domain it belongs to."""

    id: str
    jurisdiction: str
    facility: str
    backend: str
    location: str
    operator: str = "operator"
    capacity: int = 1
    state: NodeState = NodeState.ACTIVE
    pack_limit: int = 64 << 10

    def __post_init__(self) -> None:
        node_id(self.id)
        jurisdiction_code(self.jurisdiction)
        facility_name(self.facility)
        if not 1 <= self.capacity <= MAX_NODE_CAPACITY:
            raise InvalidInput(
                f"node {self.id}: capacity must be a whole number from 1 to {MAX_NODE_CAPACITY}"
            )
        if self.pack_limit < 0:
            raise InvalidInput(f"node {self.id}: pack_limit must not be negative")


@slot_init
@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Names one object: (tenant, subject, key)."""

    tenant: str
    subject: str
    key: str

    def __post_init__(self) -> None:
        tenant_name(self.tenant)
        subject_id(self.subject)
        object_key(self.key)

    def __str__(self) -> str:
        return f"{self.tenant}/{self.subject}/{self.key}"


class AuditPosition(NamedTuple):
    """Where a key use's decision entry is in its cell's audit log: the cell, the entry's
    index and its RFC 9162 leaf hash. The custodian is asked only once that entry is
    durable, and keeps what it is shown for the partner's witness, which cosigns no head
    of the cell that does not hold it (`governance.seen`). Made on every key use, by the
    guard from what the log returned: a tuple (a frozen dataclass cost 2.5 times as
    much to make), not checked here."""

    cell: str
    entry_index: int
    leaf: bytes


@slot_init
@dataclass(frozen=True, slots=True)
class Justification:
    """Why a key is used: sent to the custodian with every wrap, unwrap and destroy, with
    where the decision that allowed it is in the audit log (``audit``, when audited)."""

    principal: str
    purpose: str
    request_id: str
    requester_jurisdiction: str | None = None
    approval_id: str | None = None
    audit: AuditPosition | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "principal": self.principal,
            "purpose": self.purpose,
            "request_id": self.request_id,
            "requester_jurisdiction": self.requester_jurisdiction,
            "approval_id": self.approval_id,
        }


@dataclass(frozen=True, slots=True)
class ShardLocation:
    """Where one shard of one segment lives. ``in_config`` is false for a node the
    config no longer lists: its facility is not known then, and ``facility`` says
    ``unknown``, a name a configured facility may have too."""

    segment: int
    index: int
    node: str
    jurisdiction: str
    facility: str
    in_config: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What `stat` and `ls` show: never the data, never the keys."""

    ref: ObjectRef
    version: int
    size: int
    created_at: float
    segments: int
    k: int
    m: int
    nodes: tuple[str, ...] = field(default=())
    content_hash: str = ""


@slot_init
@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who is acting, why, and under which request id: carried by every vault call.

    ``principal`` is a registered principal's id (or `LOCAL_ADMIN`); the vault
    resolves it to the registered kind, tenant, roles and location. ``location``
    is used only for the local administrator, who has no registered location.
    ``approval_id`` names a met k-of-n approval when the policy requires one.
    ``refused_credential`` says the caller showed the principal's genuine token
    but it is ``revoked`` or ``expired``: the request is refused, and audited
    (and counted) as that principal's.
    """

    principal: str
    purpose: str
    request_id: str
    location: str | None = None
    approval_id: str | None = None
    refused_credential: str | None = None

    def justification(self, approval_id: str | None = None) -> Justification:
        return Justification(
            principal=self.principal,
            purpose=self.purpose,
            request_id=self.request_id,
            requester_jurisdiction=self.location,
            approval_id=approval_id or self.approval_id,
        )


LOCAL_ADMIN = "local-admin"


class _RequestIds:
    """32 hex digits: a random prefix drawn once per process, then a counter.

    Unique without a getrandom call per request (a uuid4 is one, and the call
    releases the GIL: a thread switch whenever other threads are waiting). A
    forked child draws its own prefix, so it never repeats its parent's ids.
    """

    def __init__(self) -> None:
        self.restart()
        os.register_at_fork(after_in_child=self.restart)

    def restart(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & (1 << 64) - 1:016x}"


_request_ids = _RequestIds()


def new_request_id() -> str:
    """An id unique to this request (see `_RequestIds`)."""
    return _request_ids.next()


def local_context(
    purpose: str = "operations",
    request_id: str | None = None,
    *,
    approval_id: str | None = None,
) -> RequestContext:
    """The embedded deployment's administrator, acting on this machine."""
    return RequestContext(
        LOCAL_ADMIN, purpose, request_id or new_request_id(), approval_id=approval_id
    )
