"""Deployment commands: init, subject add, forget, nodes, gc."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shardvault.cli.deployment_files import output_outside
from shardvault.cli.node_warnings import (
    alarming,
    down_nodes,
    not_down,
    warn_about_cells,
    warn_about_crowding,
    warn_about_strays,
    warn_if_any_hung,
)
from shardvault.cli.options import JsonFlag, Subject, Tenant
from shardvault.cli.outfile import write_output
from shardvault.cli.output import (
    human_size,
    print_json,
    print_table,
    say,
    shell_quoted,
    warn,
    write_out,
)
from shardvault.cli.state import state
from shardvault.demo import write_demo
from shardvault.errors import InvalidInput, ShardvaultError, Unavailable
from shardvault.vault import CellCrowding, RepairReport
from shardvault.vault.views import NodeUsage

subject_app = typer.Typer(
    help="Register subjects (users) with their home jurisdiction.", no_args_is_help=True
)


def init(
    demo: Annotated[
        str | None,
        typer.Option("--demo", metavar="DIR", help="Write a three-cell demo deployment in DIR."),
    ] = None,
) -> None:
    """Create a deployment (today: the demo one, --demo DIR)."""
    if demo is None:
        raise InvalidInput("say where: shardvault init --demo DIR")
    if not demo:
        # taken as a str: a Path would turn '' into '.', writing into the current directory
        raise InvalidInput("--demo needs a directory, not an empty string (use . for here)")
    path = write_demo(Path(demo))
    say(f"wrote {path}; use it with: shardvault --config {shell_quoted(str(path))} ...")


@subject_app.command("add")
def subject_add(
    ctx: typer.Context,
    tenant: Tenant,
    subject: Subject,
    jurisdiction: Annotated[
        str, typer.Option("--jurisdiction", "-j", metavar="J", help="Home, e.g. US.")
    ],
    json_out: JsonFlag = False,
) -> None:
    """Register SUBJECT of TENANT, living in --jurisdiction."""
    cli = state(ctx)
    record = cli.vault().register_subject(
        tenant, subject, jurisdiction, cli.request("register-subject")
    )
    if json_out:
        print_json(
            {
                "tenant": tenant,
                "subject": subject,
                "jurisdiction": record.jurisdiction,
                "key_id": record.key_id,
            }
        )
    else:
        say(f"registered {tenant}/{subject} in {record.jurisdiction}")


def forget(
    ctx: typer.Context,
    tenant: Tenant,
    subject: Subject,
    receipt: Annotated[
        str | None,  # as get -o takes it: a Path would read "" as "."
        typer.Option("--receipt", metavar="FILE", help="Also write the signed receipt here."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Forget a subject (needs a met approval): destroy their key, remove their shards.

    Prints the signed deletion receipt on stdout (or the whole result with --json).
    Run again for a subject already forgotten, finishes that forget and prints its receipt.
    Exits 1 if it could not remove the subject's shards on a node not marked down.
    """
    cli = state(ctx)
    # checked before the forget, which cannot be undone: a mistyped --receipt path
    # once lost the receipt, the forget done
    receipt_output = output_outside(receipt, cli.config(), "--receipt", "the receipt")
    result = cli.vault().forget(tenant, subject, cli.request("forget-subject"))
    if json_out:
        print_json(result)
    else:
        say(
            f"forgot {tenant}/{subject}: key {result.key_id} destroyed, "
            f"{result.versions_deleted} version(s) and {result.shards_removed} shard(s) "
            f"removed; audit entry {result.audit_index}; signed receipt:"
        )
        write_out(result.receipt)
    if receipt_output is not None:
        try:
            write_output(receipt_output, [result.receipt.encode("utf-8")], lambda _: None)
        except ShardvaultError as exc:
            raise Unavailable(
                f"{tenant}/{subject} was forgotten, but its receipt was not saved: {exc}; "
                "it is on stdout: keep that copy"
            ) from None
    if result.unscrubbed_cells:  # the key is destroyed: what is left is a name, recorded
        warn(
            f"the approvals of cell(s) {', '.join(result.unscrubbed_cells)} could not be "
            "reached and may still name the subject: the next command that opens them, or "
            "'shardvault gc', takes the name out"
        )
    skipped = not_down(cli, result.skipped_nodes)
    if skipped:  # the rule of gc, repair and nodes: someone should look, then run gc
        warn(
            f"node(s) {', '.join(skipped)} could not be reached: the subject's shards there "
            "(unreadable: the key is destroyed) stay until a gc reaches them; see "
            "'shardvault nodes', and run gc once they are back"
        )
        raise typer.Exit(1)


def nodes(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List storage nodes with their cell, facility, state and usage.

    Also counts each cell's versions with more than m shards in one facility (read
    from the manifests).

    Warns (on stderr, so --json stays one document) about a cell whose puts are
    refused for want of active nodes, whose stripes cannot survive the loss of a
    facility, or that holds such versions. Exits 1 if a node not marked down is
    unavailable or did not answer within storage.node_timeout, or if a version's
    manifest cannot be read.
    """
    cli = state(ctx)
    usage = cli.vault().node_usage()
    unreachable = {u.node.id for u in usage if u.unavailable}
    crowding = cli.vault().crowding(unreachable)
    _list_nodes(usage, crowding, json_out)
    for u in usage:  # in both modes: the exit code says one is, stderr which and why
        if alarming(u):  # one that hung too: the reason says so, so named once, here
            warn(f"node {u.node.id} is unavailable: {u.unavailable}")
    warn_about_cells(cli.config(), unreachable)
    warn_about_crowding(crowding)
    if any(alarming(u) for u in usage) or any(c.unreadable for c in crowding):
        raise typer.Exit(1)


def _shown_state(usage: NodeUsage) -> str:
    return "unavailable" if alarming(usage) else usage.node.state.value


def _list_nodes(usage: list[NodeUsage], cells: list[CellCrowding], json_out: bool) -> None:
    if json_out:
        print_json({"nodes": [_node_json(u) for u in usage], "cells": cells})
        return
    print_table(
        "nodes",
        ["node", "jurisdiction", "facility", "state", "shards", "used"],
        [
            [
                u.node.id,
                u.node.jurisdiction,
                u.node.facility,
                _shown_state(u),
                u.shards,
                human_size(u.bytes_used),
            ]
            for u in usage
        ],
    )
    print_table(
        "cells",
        ["jurisdiction", "versions", "crowded", "spreadable now", "part of the way"],
        [[c.jurisdiction, c.versions, c.crowded, c.spreadable, c.partly_spreadable] for c in cells],
    )


def _node_json(u: NodeUsage) -> dict[str, object]:
    return {
        "id": u.node.id,
        "jurisdiction": u.node.jurisdiction,
        "facility": u.node.facility,
        "backend": u.node.backend,
        "state": u.node.state.value,
        "capacity": u.node.capacity,
        "shards": u.shards,
        "bytes": u.bytes_used,
        "unavailable": u.unavailable or None,
    }


def gc(
    ctx: typer.Context,
    grace: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Seconds a pending write, temp file or unknown shard is left alone.",
        ),
    ] = 3600.0,
    json_out: JsonFlag = False,
) -> None:
    """Collect deleted versions, abandoned writes, orphan shards and stale temp files.

    Exits 1 if it skipped a node not marked down: unavailable, failing, or not
    answering within storage.node_timeout.
    """
    if grace < 0:
        raise InvalidInput("--grace must not be negative")
    cli = state(ctx)
    cli.require_local_admin("gc")
    report = cli.vault().gc(grace)
    if json_out:
        print_json(report)
    else:
        say(
            f"collected {report.versions} version(s), {report.shards} shard(s), "
            f"{report.orphans} orphan(s), {report.temporaries} temporary file(s); "
            f"moved {report.moved} shard(s) to compact packs; "
            f"removed {report.stale} copy(ies) repair left"
        )
    if report.damaged:
        warn(
            f"{report.damaged} packed shard record(s) failed their checksum: queued for "
            "repair; run 'shardvault repair'"
        )
    hung = set(cli.vault().deadline.hung)  # named below, with the deadline
    # one whose store did not open in time is unavailable too: named once, as hung
    unavailable = not_down(cli, (node for node in report.unavailable_nodes if node not in hung))
    if unavailable:
        warn(
            f"skipped unavailable node(s) {', '.join(unavailable)}: "
            "see 'shardvault nodes'; run gc again once they are back"
        )
    down = down_nodes(cli.config())
    for failed in report.failed_nodes:
        if failed.node not in hung and failed.node not in down:
            warn(
                f"node {failed.node} failed during the sweep, which stopped part-way: "
                f"{failed.error}; run gc again once that is mended"
            )
    warn_about_strays(report.strays)
    warn_if_any_hung(cli, report.skipped_nodes)  # a node that hung in the run is skipped
    if not_down(cli, report.skipped_nodes):
        raise typer.Exit(1)


def repair(
    ctx: typer.Context,
    scrub: Annotated[
        bool,
        typer.Option(
            "--scrub", help="Check every shard of every version, not only those reads found bad."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check and say what would be rebuilt and moved; write nothing."
        ),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Rebuild damaged or lost shards, and shards on nodes that are not active.

    Then move shards so no facility holds more than m of a stripe (found from the
    manifests).

    Exits 1 if a version could not be repaired (each is named, with why), or if a node
    not marked down is unavailable or did not answer within storage.node_timeout.
    """
    cli = state(ctx)
    cli.require_local_admin("repair")
    report = cli.vault().repair(scrub, dry_run)
    if json_out:
        print_json(report)
    else:
        _say_repaired(report)
    for problem in report.problems:
        warn(f"{'would not repair' if dry_run else 'not repaired'}: {problem}")
    for version in report.concentrated:  # the cell's shape, as `nodes` warns: exit 0
        warn(f"{'would stay crowded' if dry_run else 'still crowded'}: {version}")
    fate = _fate_of_unreachable_shards(scrub, dry_run)
    unavailable = not_down(cli, report.unavailable_nodes)
    if unavailable:
        warn(
            f"node(s) {', '.join(unavailable)} could not be opened or failed during the "
            f"repair: their shards {fate}; see 'shardvault nodes', or mark them down in "
            "the config if they are gone"
        )
    hung = not_down(cli, report.hung_nodes)
    if hung:
        warn(
            f"node(s) {', '.join(hung)} did not answer within "
            f"{cli.config().node_timeout:g} s (storage.node_timeout): their shards {fate}; "
            "gc deletes the old copies once they answer"
        )
    if report.problems or unavailable or hung:
        raise typer.Exit(1)


def _fate_of_unreachable_shards(scrub: bool, dry_run: bool) -> str:
    """What became (or, in a dry run, would become) of an unreachable node's shards: only
    a scrub looks at every version; without one, only what reads found missing."""
    if not scrub:
        return (
            "are rebuilt elsewhere once a read finds them missing, or by "
            "'shardvault repair --scrub'"
        )
    if dry_run:
        return "would be taken for bad and would be rebuilt elsewhere where a node can hold them"
    return "were taken for bad and rebuilt elsewhere where a node could hold them"


def _say_repaired(report: RepairReport) -> None:
    """What repair did (or, in a dry run, would do), and each shard it moved."""
    rebuilt, moved = ("would rebuild", "would move") if report.dry_run else ("rebuilt", "moved")
    say(
        f"checked {report.versions} version(s), {rebuilt} {report.rebuilt} shard(s), "
        f"{moved} {report.moved} shard(s) of {report.crowded} crowded version(s) to spread "
        "their stripes over facilities"
        + (f", {report.partly_spread} of them part of the way" if report.partly_spread else "")
        + ("; nothing was written (--dry-run)" if report.dry_run else "")
    )
    for move in report.moves:
        say(
            f"{moved} shard {move.shard} of {move.tenant}/{move.subject}/{move.key} "
            f"v{move.version} from {move.from_node} ({move.from_facility}) to "
            f"{move.to_node} ({move.to_facility})"
        )


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.add_typer(subject_app, name="subject")
    app.command()(forget)
    app.command()(nodes)
    app.command()(gc)
    app.command()(repair)
