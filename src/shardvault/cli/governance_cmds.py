"""Governance commands: principal, approval and policy (check, test)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from shardvault.cli.given import path_named
from shardvault.cli.output import OutputFailed, print_json, print_table, say, warn, write_out
from shardvault.cli.state import CliState, state
from shardvault.custodian_policy import public_key_text
from shardvault.errors import Refused, ShardvaultError
from shardvault.governance import Governance
from shardvault.governance.approval_record import Approval
from shardvault.governance.approval_signatures import load_signing_key, write_signing_key
from shardvault.governance.partner_verdicts import Veto
from shardvault.governance.principals import IssuedToken, PrincipalRegistry
from shardvault.model import LOCAL_ADMIN, named
from shardvault.policy import Action, Principal, PrincipalKind, Resource, explain, load_policy
from shardvault.policy.model import as_enum, token
from shardvault.policy.table import CaseResult, load_cases, run_table

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
# metavars as docs/cli.md names them (tests/test_docs.py), not Typer's types
TtlDays = Annotated[float, typer.Option("--ttl-days", metavar="N", help="Token lifetime in days.")]

principal_app = typer.Typer(help="Principals and their API tokens.", no_args_is_help=True)
approval_app = typer.Typer(help="k-of-n approvals of sensitive requests.", no_args_is_help=True)
policy_app = typer.Typer(help="Explain and test the access policy.", no_args_is_help=True)


def _roles(row: Mapping[str, object]) -> list[str]:
    roles = row["roles"]
    return [str(role) for role in roles] if isinstance(roles, list) else []


def _iso(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _principal(
    ident: str,
    tenant: str,
    kind: str,
    location: str,
    roles: list[str] | None,
    authority: str | None,
    authority_country: str | None,
) -> Principal:
    return Principal(
        id=ident,
        tenant=tenant,
        kind=as_enum(PrincipalKind, kind, "principal kind"),
        location=location,
        roles=frozenset(roles or ()),
        authority=authority,
        authority_country=authority_country,
    )


Kind = Annotated[
    str,
    typer.Option(
        "--kind", metavar="K", help="service, employee, partner-auditor or external-requester."
    ),
]
Roles = Annotated[
    list[str] | None, typer.Option("--role", metavar="R", help="A role (repeatable).")
]
Authority = Annotated[
    str | None,
    typer.Option("--authority", metavar="A", help="External requester: the authority."),
]
AuthorityCountry = Annotated[
    str | None,
    typer.Option("--authority-country", metavar="C", help="External requester: its country."),
]


@principal_app.command("add")
def principal_add(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="ID")],
    tenant: Annotated[str, typer.Option("--tenant", metavar="T", help="The tenant it belongs to.")],
    kind: Kind,
    location: Annotated[
        str, typer.Option("--location", metavar="J", help="Where it acts from, e.g. US.")
    ],
    role: Roles = None,
    authority: Authority = None,
    authority_country: AuthorityCountry = None,
    ttl_days: TtlDays = 90.0,
    json_out: JsonFlag = False,
) -> None:
    """Register a principal; prints its first API token (shown only once) on stdout."""
    cli = state(ctx)
    cli.require_local_admin("principal add")
    cli.config().tenant(tenant)
    principal = _principal(ident, tenant, kind, location, role, authority, authority_country)
    registry = cli.governance().registry
    issued = registry.add(principal, token_ttl=ttl_days * 86400)
    assert issued is not None
    added = f"added {kind} {ident} of {tenant} in {location}; "
    _hand_out(registry, issued, json_out, added)


def _hand_out(registry: PrincipalRegistry, issued: IssuedToken, json_out: bool, note: str) -> None:
    """Print ISSUED's token, or revoke it: one stdout could not take (closed, full) or
    an interrupt stopped was given to no one, yet stayed live until it expired."""
    try:
        if json_out:
            expires = _iso(issued.expires_at)
            print_json({"id": issued.principal, "token": issued.token, "expires_at": expires})
            return
        if note:
            say(f"{note}token expires {_iso(issued.expires_at)}")
        write_out(f"{issued.token}\n")
    except BaseException as exc:
        registry.revoke_token(issued.principal, issued.token_id)
        if isinstance(exc, OutputFailed):
            raise OutputFailed(
                f"{exc}; the token was revoked: issue another with "
                f"'shardvault principal token {issued.principal}'"
            ) from None
        raise


@principal_app.command("token")
def principal_token(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="ID")],
    ttl_days: TtlDays = 90.0,
    json_out: JsonFlag = False,
) -> None:
    """Issue another API token for a principal (shown only once)."""
    cli = state(ctx)
    cli.require_local_admin("principal token")
    registry = cli.governance().registry
    _hand_out(registry, registry.issue_token(ident, ttl_days * 86400), json_out, "")


@principal_app.command("ls")
def principal_ls(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List principals: kind, tenant, roles, location, authority, live tokens, revoked."""
    cli = state(ctx)
    cli.require_local_admin("principal ls")
    records = cli.governance().registry.all()
    rows = [
        {
            "id": r.id,
            "tenant": r.principal.tenant,
            "kind": r.principal.kind.value,
            "location": r.principal.location,
            "roles": sorted(r.principal.roles),
            "authority": r.principal.authority,
            "authority_country": r.principal.authority_country,
            "active_tokens": r.active_tokens,
            "revoked_at": None if r.revoked_at is None else _iso(r.revoked_at),
        }
        for r in records
    ]
    if json_out:
        print_json(rows)
        return
    print_table(
        "principals",
        ["id", "tenant", "kind", "location", "roles", "authority", "tokens", "revoked"],
        [
            [
                r["id"], r["tenant"], r["kind"], r["location"], ",".join(_roles(r)) or "-",
                f"{r['authority']} ({r['authority_country']})" if r["authority"] else "-",
                r["active_tokens"], r["revoked_at"] or "-",
            ]
            for r in rows
        ],
        min_width=140,
    )  # fmt: skip


@principal_app.command("revoke")
def principal_revoke(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="ID")],
    token_id: Annotated[
        str | None,
        typer.Option("--token-id", metavar="HEX", help="Revoke only this token (16 hex digits)."),
    ] = None,
) -> None:
    """Revoke a principal and all its tokens (or one token with --token-id)."""
    cli = state(ctx)
    cli.require_local_admin("principal revoke")
    registry = cli.governance().registry
    if token_id is not None:
        registry.revoke_token(ident, token_id)
        say(f"revoked token {token_id} of {ident}")
    else:
        count = registry.revoke(ident)
        say(f"revoked {ident} and {count} token(s)")


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
            {"approver": w, "verdict": v, "at": _iso(t), "signed": a.signature_of(w) is not None}
            for w, v, t in a.signatures
        ],
        "created_at": _iso(a.created_at),
        "expires_at": _iso(a.expires_at),
        "vetoed_by": None
        if veto is None
        else {"approval": veto.approval, "approver": veto.approver, "until": _iso(veto.lapses_at)},
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
                f"{a.approvals}/{a.quorum}", _iso(a.expires_at),
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


SigningKey = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        metavar="FILE",
        help="Your Ed25519 private key (PKCS#8 PEM, mode 0600): signs the verdict.",
        parser=path_named("--signing-key"),
    ),
]


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
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    signing_key: SigningKey = None,
    json_out: JsonFlag = False,
) -> None:
    """Approve as the acting principal (--as/--token), who must be a named approver.

    Sign with your key (--signing-key), which the partner's custodian checks."""
    _sign(ctx, approval_id, "approve", signing_key, json_out)


@approval_app.command("deny")
def approval_deny(
    ctx: typer.Context,
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    signing_key: SigningKey = None,
    json_out: JsonFlag = False,
) -> None:
    """Veto an approval as the acting principal: one denial ends it."""
    _sign(ctx, approval_id, "deny", signing_key, json_out)


@approval_app.command("withdraw")
def approval_withdraw(
    ctx: typer.Context,
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    signing_key: SigningKey = None,
    json_out: JsonFlag = False,
) -> None:
    """Withdraw your own signed denial of approval ID, so its request may be asked again.

    Signed with --signing-key, as for deny; the partner lifts the veto of its request,
    and the approval itself stays denied."""
    cli = state(ctx)
    key = None if signing_key is None else load_signing_key(signing_key)  # before anything
    withdrawn = cli.governance().withdraw_denial(approval_id, cli.request("approval"), key)
    at = _iso(withdrawn.withdrawn_at)
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


def _registered_principal(cli: CliState, ident: str, tenant: str, jurisdiction: str) -> Principal:
    """A registered principal, for the local administrator or for itself (with a live
    token). A registration is the administrator's to show (`principal ls`): the trace
    would tell anyone else whether ``ident`` exists and which roles it holds. The
    built-in local administrator, registered nowhere, is the one the guard makes."""
    request = cli.request("policy")
    if request.principal != ident or request.refused_credential is not None:
        cli.require_local_admin("policy check of another registered principal")
    if ident == LOCAL_ADMIN:
        return cli.governance().resolve(request, tenant, jurisdiction)
    return cli.governance().registry.get(ident).principal


@policy_app.command("check")
def policy_check(
    ctx: typer.Context,
    action: Annotated[str, typer.Option("--action", metavar="A", help="read, write, forget, ...")],
    tenant: Annotated[str, typer.Option("--tenant", metavar="T", help="The data's tenant.")],
    jurisdiction: Annotated[
        str,
        typer.Option("--jurisdiction", metavar="J", help="The data's (subject's) jurisdiction."),
    ],
    purpose: Annotated[str, typer.Option("--purpose", metavar="P", help="The declared purpose.")],
    principal: Annotated[
        str,
        typer.Option(
            "--principal", metavar="ID", help="A registered principal, or the id of one below."
        ),
    ],
    kind: Annotated[
        str | None,
        typer.Option("--kind", metavar="K", help="Describe the principal inline instead."),
    ] = None,
    principal_tenant: Annotated[
        str | None, typer.Option("--principal-tenant", metavar="T", help="Inline: its tenant.")
    ] = None,
    location: Annotated[
        str | None, typer.Option("--location", metavar="L", help="Inline: location.")
    ] = None,
    role: Roles = None,
    authority: Authority = None,
    authority_country: AuthorityCountry = None,
    data_class: Annotated[
        str, typer.Option("--data-class", metavar="C", help="The data's class.")
    ] = "protected",
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            metavar="FILE",
            help="Policy file (default: the deployment's).",
            parser=path_named("--policy"),
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Explain the decision for one request: every invariant and rule, in order."""
    cli = state(ctx)
    if policy_file is None:  # the deployment's policy: about the deployment's data
        cli.config().tenant(tenant)
        cli.config().jurisdiction(jurisdiction)
    policy = load_policy(policy_file) if policy_file else cli.governance().policy
    if kind is not None:
        who = _principal(
            principal, principal_tenant or tenant, kind, location or jurisdiction, role,
            authority, authority_country,
        )  # fmt: skip
    else:
        who = _registered_principal(cli, principal, tenant, jurisdiction)
    resource = Resource(tenant, jurisdiction, data_class)  # type: ignore[arg-type]
    # a purpose no request may declare is refused as a request's is, not answered for
    checked = token(purpose, "purpose")
    result = explain(policy, who, as_enum(Action, action, "action"), resource, checked)
    decision = result.decision
    if json_out:
        print_json(
            {
                "effect": decision.effect.value,
                "rule": decision.rule,
                "reason": decision.reason,
                "trace": [
                    {
                        "rule": t.rule,
                        "matched": t.matched,
                        "effect": t.effect.value if t.effect else None,
                    }
                    for t in result.trace
                ],
            }
        )
        return
    print_table(
        f"{action} by {who.id} on {tenant}/{jurisdiction} ({data_class}) for {purpose}",
        ["rule", "matched", "effect", "note"],
        [
            [t.rule, "yes" if t.matched else "no", t.effect.value if t.effect else "-", t.note]
            for t in result.trace
        ],
    )
    say(f"decision: {decision.effect.value} by {decision.rule}: {decision.reason}")


@policy_app.command("test")
def policy_test(
    ctx: typer.Context,
    cases_file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="A decision table (TOML).", parser=path_named("FILE")),
    ],
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            metavar="POLICY",
            help="Policy file (default: the deployment's).",
            parser=path_named("--policy"),
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run a table of expected decisions; exit 1 if any case fails."""
    policy = load_policy(policy_file) if policy_file else state(ctx).governance().policy
    results = run_table(policy, load_cases(cases_file))
    failed = sum(1 for r in results if not r.passed)
    if json_out:
        print_json(
            {
                "cases": [_case_json(r) for r in results],
                "passed": len(results) - failed,
                "failed": failed,
            }
        )
    else:
        for result in results:
            write_out(f"{result.describe()}\n")
    if failed:
        raise Refused(f"{failed} of {len(results)} policy case(s) failed")
    say(f"all {len(results)} policy case(s) passed")


def _case_json(result: CaseResult) -> dict[str, object]:
    """One case of a decision table: what it expected (a rule of None: any) and got."""
    return {
        "name": result.case.name,
        "passed": result.passed,
        "expected": {"effect": result.case.expect.value, "rule": result.case.rule},
        "got": {"effect": result.decision.effect.value, "rule": result.decision.rule},
    }


def register(app: typer.Typer) -> None:
    app.add_typer(principal_app, name="principal")
    app.add_typer(approval_app, name="approval")
    app.add_typer(policy_app, name="policy")
