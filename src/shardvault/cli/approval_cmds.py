"""Approval commands: list, sign (approve, deny, withdraw) and make approvers' keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shardvault.cli.given import path_named
from shardvault.cli.options import JsonFlag
from shardvault.cli.output import (
    OutputFailed,
    iso_time,
    print_json,
    print_table,
    say,
    warn,
    write_out,
)
from shardvault.cli.state import state
from shardvault.custodian_policy import public_key_text
from shardvault.errors import ShardvaultError
from shardvault.governance import Governance
from shardvault.governance.approval_record import Approval
from shardvault.governance.approval_signatures import load_signing_key, write_signing_key
from shardvault.governance.partner_verdicts import Veto
from shardvault.model import named

approval_app = typer.Typer(help="k-of-n approvals of sensitive requests.", no_args_is_help=True)


def _approval_json(a: Approval, veto: Veto | None = None) -> dict[str, object]:
    return {
        "id": a.id,
        "status": _status(a, veto),
        "requester": a.requester,
        "action": a.action,
        "tenant": a.tenant,
        "subject": a.subject,
        "key": a.key,
        "purpose": a.purpose,
        "quorum": a.quorum,
        "approvals": a.approvals,
        "approvers": list(a.approvers),
        "signatures": [
            {
                "approver": w,
                "verdict": v,
                "at": iso_time(t),
                "signed": a.signature_of(w) is not None,
            }
            for w, v, t in a.signatures
        ],
        "created_at": iso_time(a.created_at),
        "expires_at": iso_time(a.expires_at),
        "vetoed_by": None
        if veto is None
        else {
            "approval": veto.approval,
            "approver": veto.approver,
            "until": iso_time(veto.lapses_at),
        },
    }


def _status(a: Approval, veto: Veto | None) -> str:
    """The book's status, but ``vetoed`` for a pending or met approval a standing signed
    denial of its request binds: no signature on it counts, nor does it (docs/cli.md)."""
    return a.status if veto is None else "vetoed"


@approval_app.command("ls")
def approval_ls(
    ctx: typer.Context,
    every: Annotated[bool, typer.Option("--all", help="Include decided and expired ones.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """List the pending approvals the acting principal may see (every one with --all).

    All of them for the local administrator, else those it requested or is named to
    sign. One a standing signed denial of its request binds shows as vetoed."""
    cli = state(ctx)
    governance = cli.governance()
    found = governance.visible_approvals(cli.request("approval"), decided=every)
    vetoes = _vetoes(governance, found)
    if json_out:
        print_json([_approval_json(a, veto) for a, veto in zip(found, vetoes, strict=True)])
        return
    print_table(
        "approvals",
        ["id", "status", "requester", "action", "resource", "purpose", "signed", "expires"],
        [
            [
                a.id, _status(a, veto), a.requester, a.action,
                "/".join(p for p in (a.tenant, a.subject, a.key) if p), a.purpose,
                f"{a.approvals}/{a.quorum}", iso_time(a.expires_at),
            ]
            for a, veto in zip(found, vetoes, strict=True)
        ],
        min_width=150,
    )  # fmt: skip


def _vetoes(governance: Governance, found: list[Approval]) -> list[Veto | None]:
    """The standing veto binding each approval, if one does. The partner's record lost or
    unreadable shows them as the book has them, with a warning, rather than fail: the
    partner looks over the approvals still open before it starts a new record."""
    try:
        return governance.standing_vetoes_of(found)
    except ShardvaultError as exc:
        warn(f"{exc}; an approval a signed denial binds shows as pending or approved")
        return [None] * len(found)


ApprovalId = Annotated[str, typer.Argument(metavar="ID")]


def _signing_key(signs: str) -> Any:
    """The `--signing-key` option, its help naming what the command signs: a verdict
    and a withdrawal are statements of different kinds (docs/formats.md)."""
    return typer.Option(
        "--signing-key",
        metavar="FILE",
        help=f"Your Ed25519 private key (PKCS#8 PEM, mode 0600): signs the {signs}.",
        parser=path_named("--signing-key"),
    )


SigningKey = Annotated[Path | None, _signing_key("verdict")]
WithdrawalKey = Annotated[Path | None, _signing_key("withdrawal")]


def _sign(
    ctx: typer.Context, approval_id: str, verdict: str, key_file: Path | None, json_out: bool
) -> None:
    cli = state(ctx)
    key = None if key_file is None else load_signing_key(key_file)  # before anything is done
    governance = cli.governance()
    request = cli.request("approval")
    approval = governance.sign_approval(approval_id, request, verdict, key)
    if json_out:
        print_json(_approval_json(approval))
        return
    signed = "signed" if key is not None else "not signed"
    if key is not None and request.principal not in governance.custodian_policy.approvers:
        signed += f" (the partner's custodian holds no key for {request.principal}: not counted)"
    say(
        f"{approval.id}: {verdict} recorded, {signed}; {approval.approvals} of "
        f"{approval.quorum}, now {approval.status}"
    )


@approval_app.command("approve")
def approval_approve(
    ctx: typer.Context,
    approval_id: ApprovalId,
    signing_key: SigningKey = None,
    json_out: JsonFlag = False,
) -> None:
    """Approve as the acting principal (--as/--token), who must be a named approver.

    Sign with your key (--signing-key), which the partner's custodian checks."""
    _sign(ctx, approval_id, "approve", signing_key, json_out)


@approval_app.command("deny")
def approval_deny(
    ctx: typer.Context,
    approval_id: ApprovalId,
    signing_key: SigningKey = None,
    json_out: JsonFlag = False,
) -> None:
    """Veto an approval as the acting principal: one denial ends it."""
    _sign(ctx, approval_id, "deny", signing_key, json_out)


@approval_app.command("withdraw")
def approval_withdraw(
    ctx: typer.Context,
    approval_id: ApprovalId,
    signing_key: WithdrawalKey = None,
    json_out: JsonFlag = False,
) -> None:
    """Withdraw your own signed denial of approval ID, so its request may be asked again.

    Signed with --signing-key, as for deny; the partner lifts the veto of its request,
    and the approval itself stays denied."""
    cli = state(ctx)
    key = None if signing_key is None else load_signing_key(signing_key)  # before anything
    withdrawn = cli.governance().withdraw_denial(approval_id, cli.request("approval"), key)
    at = iso_time(withdrawn.withdrawn_at)
    if json_out:
        print_json(
            {"approval": withdrawn.approval, "approver": withdrawn.approver, "withdrawn_at": at}
        )
        return
    say(
        f"{withdrawn.approval}: {withdrawn.approver}'s denial withdrawn at {at}; the veto of "
        "its request is lifted; the approval itself stays denied"
    )


@approval_app.command("keygen")
def approval_keygen(
    key_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="Where to write the new private key.", parser=path_named("FILE")
        ),
    ],
    json_out: JsonFlag = False,
) -> None:
    """Make an approver's Ed25519 key pair: the private key to FILE, the public one to stdout.

    FILE is made 0600, never over an existing file; the public key is for the
    partner's table of approvers."""
    public = public_key_text(write_signing_key(key_file).public_key())
    try:
        _show_public_key(key_file, public, json_out)
    except BaseException as exc:  # unseen, the public key can be enrolled by no one
        key_file.unlink(missing_ok=True)  # and the file made a second run refuse
        if isinstance(exc, OutputFailed):
            raise OutputFailed(f"{exc}; {named(str(key_file))} was removed: run it again") from None
        raise


def _show_public_key(key_file: Path, public: str, json_out: bool) -> None:
    if json_out:
        print_json({"private_key": str(key_file), "public_key": public})
        return
    say(
        f"wrote {key_file} (keep it to yourself); the partner adds your public key to its "
        'custodian policy: [approvers] <your principal id> = "<the line below>"'
    )
    write_out(f"{public}\n")


def register(app: typer.Typer) -> None:
    app.add_typer(approval_app, name="approval")
