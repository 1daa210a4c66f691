"""Every cell's audit log, as governance writes its entries into them and reads them back.

The guard, the approvals desk and the forget all write entries of the same shape
(who, which request, what, why, the decision and where it stands), in the cell
of the resource they are about; they build them here, so that every entry of a
request names the same fields. Reading is rare (a forget run again, an export,
a head signed on demand) and goes through the same cells.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shardvault.audit import AuditEntry, AuditTicket, SignedNote, new_entry
from shardvault.audit.entry import PSEUDONYM_PREFIX
from shardvault.errors import InvalidInput
from shardvault.governance.approval_record import Approval
from shardvault.governance.heads import CellAudit, PartnerWitness, publish_head
from shardvault.model import DataClass, RequestContext, shown
from shardvault.policy import Action, Principal, PrincipalKind, Resource

Details = dict[str, str | int | bool | None]


def entry_details(
    principal: Principal | None, resource: Resource, stage: str, **more: object
) -> Details:
    """An entry's details: the ``stage`` that wrote it, the resource's cell and class, who
    asked (kind, location, and an authority's name and country) and ``more`` but Nones."""
    details: Details = {
        "stage": stage,
        "jurisdiction": resource.jurisdiction,
        "data_class": resource.data_class.value,
    }
    if principal is not None:
        details["kind"] = principal.kind.value
        details["location"] = principal.location
        if principal.kind is PrincipalKind.EXTERNAL_REQUESTER:
            details["authority"] = principal.authority
            details["authority_country"] = principal.authority_country
    for name, value in more.items():
        if value is not None:
            assert isinstance(value, str | int | bool)
            details[name] = value
    return details


def request_fields(ctx: RequestContext, action: Action | str) -> dict[str, str]:
    """What every audit entry of a request names: who, which request, what, why."""
    return dict(
        principal=ctx.principal, request_id=ctx.request_id, action=str(action),
        purpose=ctx.purpose,
    )  # fmt: skip


def approval_resource(approval: Approval) -> Resource:
    """What an approval is about, for its audit entries. A forgotten subject's approvals
    keep only audit pseudonyms, which are no subject id: those name the tenant, and
    the entry's ``approval_id`` leads to the approval and its pseudonyms."""
    if approval.subject is not None and approval.subject.startswith(PSEUDONYM_PREFIX):
        return Resource(approval.tenant, approval.jurisdiction, DataClass.PROTECTED)
    return Resource(
        approval.tenant, approval.jurisdiction, DataClass.PROTECTED, approval.subject, approval.key
    )


def _records_forget(entry: AuditEntry, resource: str, key_id: str) -> bool:
    """Whether ``entry`` is the outcome of the forget of ``resource`` that destroyed
    ``key_id``: what a deletion receipt proves is in the log."""
    return (
        entry.action == str(Action.FORGET)
        and entry.result == "forgotten"
        and entry.resource == resource
        and entry.details.get("key_id") == key_id
    )


class AuditLogs:
    """The cells' audit logs by jurisdiction, and the partner that cosigns their heads."""

    def __init__(
        self, cells: dict[str, CellAudit], partner: PartnerWitness, clock: Callable[[], float]
    ) -> None:
        self.cells = cells
        self._partner = partner
        self._clock = clock

    def cell(self, jurisdiction: str) -> CellAudit:
        found = self.cells.get(jurisdiction)
        if found is None:
            raise InvalidInput(f"no cell {shown(jurisdiction)} (cells: {', '.join(self.cells)})")
        return found

    def audit(
        self,
        resource: Resource,
        *,
        principal: str,
        request_id: str,
        action: str,
        purpose: str,
        decision: str,
        rule: str,
        result: str,
        details: Mapping[str, str | int | bool | None],
    ) -> AuditTicket:
        """Queue one entry in the resource's cell; `.wait()` on it before acting on it."""
        cell = self.cell(resource.jurisdiction)
        entry = new_entry(
            at=self._clock(),
            hasher=cell.hasher,
            request_id=request_id,
            principal=principal,
            tenant=resource.tenant,
            action=action,
            purpose=purpose,
            decision=decision,
            rule=rule,
            result=result,
            subject=resource.subject,
            key=resource.key,
            details=details,
        )
        return cell.submit(entry)

    def forget_outcome(
        self,
        jurisdiction: str,
        tenant: str,
        subject: str,
        key_id: str,
        *,
        known: int | None,
        since: int,
    ) -> int | None:
        """The index of the outcome entry of the forget that destroyed ``key_id``, if the
        cell's log holds one: at ``known`` (where the catalog noted it), else the first
        from ``since`` on (a forget killed between writing it and noting it). Only a
        forget run again after one was cut short asks, so reading the log is affordable."""
        cell = self.cell(jurisdiction)
        log = cell.log
        log.refresh()  # other processes' entries too: the cut-short forget ran in one
        resource = cell.hasher.resource(tenant, subject)
        if (
            known is not None
            and known < log.size
            and _records_forget(log.entry(known), resource, key_id)
        ):
            return known
        marker = key_id.encode("utf-8")  # parse only the entries that name the key
        since = min(since, log.size)  # a log cut shorter is the witness's to refuse
        for index, raw in enumerate(log.iter_entry_bytes(since, log.size), since):
            if marker in raw and _records_forget(AuditEntry.from_bytes(raw), resource, key_id):
                return index
        return None

    def publish_head(self, jurisdiction: str) -> SignedNote:
        """A fresh head of the cell's log, signed by the cell and cosigned by the partner."""
        return publish_head(self.cell(jurisdiction), self._partner, int(self._clock()))

    def entries(self, jurisdiction: str, end: int) -> list[AuditEntry]:
        log = self.cell(jurisdiction).log
        return [AuditEntry.from_bytes(raw) for raw in log.iter_entry_bytes(0, end)]

    def release(self) -> None:
        """Close every cell's audit log; the next use reopens it (and so recovers a log
        this process found broken)."""
        for cell in self.cells.values():
            cell.close()


__all__ = [
    "AuditLogs",
    "Details",
    "approval_resource",
    "entry_details",
    "request_fields",
]
