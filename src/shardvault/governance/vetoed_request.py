"""What a signed denial binds: the request it refuses, and the tags the partner keeps of it.

A denial binds the request its approval was asked for, not only that approval, so
asking the same thing again does not get round one approver's no. The partner
keeps, beside each denial, tags of that request (HMAC-SHA256 under its record's
own random veto key, `verdicts_file`): they name nobody without the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from shardvault.audit.entry import canonical_json
from shardvault.errors import IntegrityError
from shardvault.governance.approval_record import Approval
from shardvault.policy import Action

_TAG = b"shardvault-veto/v1\n"


@dataclass(frozen=True, slots=True)
class VetoedRequest:
    """What a signed denial binds: the request its approval was asked for, less what
    each ask makes new (its request id and expiry), or the same request asked again
    would be another.

    A forget's is its tenant and subject: what it does (the subject's key destroyed,
    for good) is the same whoever asks and whatever purpose they give, so neither
    another administrator nor another wording gets round a veto. Any other's is also
    who asks (``requester``) and why (``purpose``): a court's lawful read vetoed does
    not stop another authority's request, or the service serving the user, which the
    approvers judge on their own. ``key`` None: the request names no object key (a
    list, a registration; an approval names exactly the key of its request). A veto
    naming none still matches an ask naming one, and the reverse (from when an
    approval could be for any key of the subject), though no action is asked both
    ways. The cell is left out: a tenant's subject id names one user wherever they
    live."""

    action: str
    tenant: str
    subject: str | None
    key: str | None = None
    requester: str | None = None
    purpose: str | None = None

    @classmethod
    def of(
        cls,
        requester: str,
        action: str,
        tenant: str,
        subject: str | None,
        key: str | None,
        purpose: str,
    ) -> VetoedRequest:
        if action == str(Action.FORGET):
            return cls(action, tenant, subject)
        return cls(action, tenant, subject, key, requester, purpose)

    @classmethod
    def of_approval(cls, approval: Approval) -> VetoedRequest:
        """The request ``approval`` covers, as the book holds it: the statement its
        signatures verify against, so a row edited to escape a veto counts for nothing."""
        return cls.of(
            approval.requester, approval.action, approval.tenant, approval.subject,
            approval.key, approval.purpose,
        )  # fmt: skip

    def tags(self, veto_key: bytes) -> tuple[bytes, bytes | None]:
        """The request's tag, and its object key's (None: the request names none)."""
        fields: dict[str, str | None] = {
            "action": self.action, "tenant": self.tenant, "subject": self.subject,
            "requester": self.requester, "purpose": self.purpose,
        }  # fmt: skip
        request = _tag(veto_key, fields)
        return request, None if self.key is None else _tag(veto_key, {**fields, "key": self.key})


def _tag(veto_key: bytes, fields: Mapping[str, str | None]) -> bytes:
    try:
        text = canonical_json(fields)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise IntegrityError(f"a request that cannot be stated: {exc}") from None
    return hmac.new(veto_key, _TAG + text, hashlib.sha256).digest()


__all__ = ["VetoedRequest"]
