"""Policy commands: explain one request's decision (check) and run a table of cases (test)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shardvault.cli.given import path_named
from shardvault.cli.options import JsonFlag
from shardvault.cli.output import (
    print_json,
    print_table,
    say,
    write_out,
)
from shardvault.cli.principal_cmds import Authority, AuthorityCountry, Roles, principal_of
from shardvault.cli.state import CliState, state
from shardvault.errors import Refused
from shardvault.model import LOCAL_ADMIN, token
from shardvault.policy import Action, Principal, Resource, explain, load_policy
from shardvault.policy.model import as_enum
from shardvault.policy.table import CaseResult, load_cases, run_table

policy_app = typer.Typer(help="Explain and test the access policy.", no_args_is_help=True)


def _registered_principal(cli: CliState, ident: str, tenant: str, jurisdiction: str) -> Principal:
    """A registered principal, for the local administrator or for itself (with a live
    token). A registration is the administrator's to show (`principal ls`): the trace
    would tell anyone else whether ``ident`` exists and which roles it holds. The
    built-in local administrator, registered nowhere, is the one the guard makes.
    Only the caller is asked for: a check records nothing and shows no custodian a
    purpose, so it takes the default one, as `require_local_admin` does."""
    request = cli.request()
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
        str | None,
        typer.Option("--location", metavar="J", help="Inline: where it acts from, e.g. US."),
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
        who = principal_of(
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
            metavar="FILE",
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
    app.add_typer(policy_app, name="policy")
