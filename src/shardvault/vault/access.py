"""A request's access: decided and audited in the subject's home, answered only once audited.

Every call made with a request context goes through these: the subject's home
from the directory, the guard's decision in that cell, the subject's record
checked live there, and the subject key from the custodian once the decision's
entry is durable. Free functions taking the vault, so the get and put paths
call them directly, with no layer between (docs/performance.md counts calls).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from shardvault.catalog.port import SubjectRecord
from shardvault.errors import (
    AccessDenied,
    ApprovalRequired,
    AuditUnavailable,
    IntegrityError,
    InvalidInput,
    NotFound,
    SubjectForgotten,
)
from shardvault.governance.guard import Access
from shardvault.keys.port import KeyScope
from shardvault.model import Justification, ObjectRef, RequestContext, subject_id
from shardvault.policy import Action
from shardvault.vault.forget_collection import finish_forget

if TYPE_CHECKING:
    from shardvault.vault.core import Vault

MAX_VERSION = 2**63 - 1
_T = TypeVar("_T")

_ANSWERS = (NotFound, SubjectForgotten, IntegrityError)
"""Errors that tell the caller something about the data: given only once audited."""


class AnsweredAfterAudit:
    """An error is an answer too: raise it only once the access's audit entry is durable.

    If the entry cannot be written, an answer about the data (not found, forgotten,
    inconsistent) becomes `AuditUnavailable`: fail closed. A failure (the catalog
    unreadable, say) keeps its own message. A class, not a @contextmanager
    generator: every read passes through two of these.
    """

    __slots__ = ("_access",)

    def __init__(self, access: Access) -> None:
        self._access = access

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            return
        if issubclass(kind, _ANSWERS):
            self._access.wait_audited()
            return
        with contextlib.suppress(AuditUnavailable):
            self._access.wait_audited()


def home_of(
    vault: Vault,
    tenant: str,
    subject: str,
    ctx: RequestContext | None = None,
    action: Action = Action.STAT,
    key: str | None = None,
) -> str:
    """The subject's home jurisdiction, from the directory (`NotFound` if unregistered).

    With a request context, "not registered" is said only to a principal the
    policy would let act on the subject somewhere; anyone else gets, audited,
    the refusal a registered subject would give them.
    """
    spec = vault.config.tenant(tenant)
    subject_id(subject)
    home = vault.directory.home(tenant, subject)
    if home is None and ctx is not None:
        where = list(spec.jurisdictions or vault.config.jurisdictions)
        with homed_meanwhile(vault, ctx, action, tenant, subject):
            vault.governance.check_unregistered(ctx, action, tenant, where, subject, key)
    return registered(home, tenant, subject)


def authorized(
    vault: Vault,
    ctx: RequestContext,
    action: Action,
    tenant: str,
    subject: str,
    key: str | None = None,
    *,
    durable: bool = True,
) -> tuple[SubjectRecord, Access]:
    """Decide and audit the access in the subject's home cell, then check it is live.

    The cell is asked only after the decision: the decision's entry waits in
    the audit queue meanwhile, so more entries share each audit write (reads
    do the same in `reading.authorized_version`: docs/performance.md).
    """
    home = home_of(vault, tenant, subject, ctx, action, key)
    access = decided(vault, ctx, action, tenant, home, subject, key, durable=durable)
    with AnsweredAfterAudit(access):  # a subject missing or forgotten is an answer
        record = vault.cells[home].catalog.get_subject(tenant, subject)
        return settled_at_home(vault, record, tenant, subject, home), access


def settled_at_home(
    vault: Vault, found: SubjectRecord | None, tenant: str, subject: str, home: str
) -> SubjectRecord:
    """`live_at_home`, and the home settled in the directory: its cell holds the subject."""
    record = live_at_home(found, tenant, subject, home)
    vault.directory.settle(tenant, subject, home)
    return record


def decided(
    vault: Vault,
    ctx: RequestContext,
    action: Action,
    tenant: str,
    home: str,
    subject: str,
    key: str | None = None,
    *,
    durable: bool = True,
    ref: ObjectRef | None = None,
) -> Access:
    """`Guard.authorize` in the subject's home cell (`authorize_object` for the
    object ``ref`` names, when given: tenant, subject and key are then its). An
    approval it asks for a subject already forgotten would name the subject again,
    in clear: what a forget does after its catalog mark is done again
    (`forget_collection.finish_forget`), which replaces those names by their pseudonyms, before the
    refusal goes."""
    try:
        if ref is not None:
            return vault.governance.guard.authorize_object(ctx, action, ref, home, durable=durable)
        return vault.governance.guard.authorize(
            ctx, action, tenant, home, subject, key, durable=durable
        )
    except ApprovalRequired:
        record = vault.cells[home].catalog.get_subject(tenant, subject)
        if record is not None and record.forgotten_at is not None:
            finish_forget(vault, tenant, subject)
        raise


@contextlib.contextmanager
def homed_meanwhile(
    vault: Vault, ctx: RequestContext, action: Action, tenant: str, subject: str
) -> Iterator[None]:
    """Around a decision for an id the directory had no home for: an approval it asks
    is booked outside the home a registration may have given the id meanwhile, after
    that registration took the id out of other cells' approvals, so the directory is
    read again once it is booked (`SubjectScrubs.subject_homed`). Either this read sees
    the home, or that registration's pass comes after the booking and sees it. If
    this read marked the approval homed elsewhere, its requester is refused saying
    so, not told to have it signed (`Guard.refuse_if_homed_elsewhere`)."""
    try:
        yield
    except ApprovalRequired as asked:
        home = vault.directory.home(tenant, subject)
        if home is not None:
            vault.governance.subject_homed(home, tenant, subject)
            vault.governance.refuse_if_homed_elsewhere(ctx, action, asked)
        raise


def subject_key_of(vault: Vault, record: SubjectRecord, access: Access) -> bytes:
    """The subject key, from the custodian."""
    wrapped = record.wrapped_key
    assert wrapped is not None
    scope = KeyScope(record.tenant, record.jurisdiction)
    return key_use(
        vault, access, lambda why: vault.custodian.unwrap(scope, record.key_id, wrapped, why)
    )


def key_use(vault: Vault, access: Access, use: Callable[[Justification], _T]) -> _T:
    """A custodian call (wrap, unwrap, destroy) for an access, once its audit entry is
    durable (`Access.justification` waits for it), with its justification; a refusal
    by the custodian is audited too."""
    why = access.justification()
    try:
        return use(why)
    except AccessDenied as refusal:
        vault.governance.record_custodian_refusal(access, refusal)
        raise


def whole(value: object) -> bool:
    """Whether VALUE is an int (not a bool): a version, if-match or page size given as a
    float or a string failed in the catalog, as a storage error or a TypeError, or was
    looked up as 'v1.5' and called not found."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_version(version: int | None) -> None:
    """A version number the catalog can hold (a signed 64-bit integer), or none."""
    if version is None:
        return
    if not whole(version):
        raise InvalidInput(
            f"version {version!r} is not a whole number: versions run from 1 to {MAX_VERSION}"
        )
    if not 1 <= version <= MAX_VERSION:
        raise InvalidInput(
            f"version {version} is out of range: versions run from 1 to {MAX_VERSION}"
        )


def check_if_match(if_match: int | None, *, deleting: bool = False) -> None:
    """A precondition's version the catalog can hold, or none: 0 (the key must be new)
    or a version for a put; a version only for a delete, which 0 leaves nothing to do."""
    if if_match is None:
        return
    if whole(if_match) and (1 if deleting else 0) <= if_match <= MAX_VERSION:
        return
    takes = (
        "a delete's --if-match takes a version from 1"
        if deleting
        else "--if-match takes 0 (the key must be new) or a version from 1"
    )
    raise InvalidInput(f"version {if_match!r} is out of range: {takes} to {MAX_VERSION}")


def registered(found: _T | None, tenant: str, subject: str) -> _T:
    """What was looked up for the subject, unless it is not registered (`NotFound`)."""
    if found is None:
        raise NotFound(
            f"no subject {subject} in tenant {tenant}: register it with 'shardvault subject add'"
        )
    return found


def at_home(record: SubjectRecord, home: str) -> SubjectRecord:
    """The record, if it names the cell the directory sent the request to: the access
    was decided and audited there, and its data goes where the record says."""
    if record.jurisdiction != home:
        raise IntegrityError(
            f"subject {record.subject} of tenant {record.tenant} is recorded in {home}'s "
            f"catalog as living in {record.jurisdiction}: refusing to guess; restore the "
            "catalog or the directory"
        )
    return record


def live_at_home(
    found: SubjectRecord | None, tenant: str, subject: str, home: str
) -> SubjectRecord:
    """The subject's record from its home cell, if registered there, at home and not forgotten."""
    return _live(at_home(registered(found, tenant, subject), home))


def _live(record: SubjectRecord) -> SubjectRecord:
    """The record, unless the subject was forgotten (`SubjectForgotten`)."""
    if record.forgotten_at is not None or record.wrapped_key is None:
        raise SubjectForgotten(
            f"subject {record.subject} of tenant {record.tenant} was forgotten on "
            f"{forgotten_on(record)}; its data is unrecoverable"
        )
    return record


def forgotten_on(record: SubjectRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.forgotten_at or 0))
