"""Principal commands: register principals, hand out and revoke their API tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import typer

from shardvault.cli.options import JsonFlag
from shardvault.cli.output import (
    OutputFailed,
    iso_time,
    print_json,
    print_table,
    say,
    write_out,
)
from shardvault.cli.state import state
from shardvault.governance.principals import IssuedToken, PrincipalRegistry
from shardvault.policy import Principal, PrincipalKind
from shardvault.policy.model import as_enum

# metavars as docs/cli.md names them (tests/test_docs.py), not Typer's types
PrincipalId = Annotated[str, typer.Argument(metavar="ID")]
TtlDays = Annotated[float, typer.Option("--ttl-days", metavar="N", help="Token lifetime in days.")]

principal_app = typer.Typer(help="Principals and their API tokens.", no_args_is_help=True)


def _roles(row: Mapping[str, object]) -> list[str]:
    roles = row["roles"]
    return [str(role) for role in roles] if isinstance(roles, list) else []


def principal_of(
    ident: str,
    tenant: str,
    kind: str,
    location: str,
    roles: list[str] | None,
    authority: str | None,
    authority_country: str | None,
) -> Principal:
    """The principal the options of `principal add` and `policy check` describe."""
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
    ident: PrincipalId,
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
    principal = principal_of(ident, tenant, kind, location, role, authority, authority_country)
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
            expires = iso_time(issued.expires_at)
            print_json({"id": issued.principal, "token": issued.token, "expires_at": expires})
            return
        if note:
            say(f"{note}token expires {iso_time(issued.expires_at)}")
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
    ident: PrincipalId,
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
            "revoked_at": None if r.revoked_at is None else iso_time(r.revoked_at),
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
    ident: PrincipalId,
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


def register(app: typer.Typer) -> None:
    app.add_typer(principal_app, name="principal")
