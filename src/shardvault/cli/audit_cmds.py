"""Audit commands (head, keys, export, verify, prove-*), the transparency report, receipts.

`audit verify` and `receipt verify` read no config and no state: an outsider runs
them with an export (or a receipt), public keys and a head from the partner.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Annotated

import typer

from shardvault.audit import Checkpoint, export_to_directory, export_to_file, verify_export
from shardvault.audit.export import check_destination
from shardvault.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from shardvault.cli.deployment_files import output_outside, refuse_deployment_file
from shardvault.cli.given import check_readable, path_named, read_given
from shardvault.cli.options import JsonFlag
from shardvault.cli.outfile import write_output
from shardvault.cli.output import print_json, print_table, say, warn, write_out
from shardvault.cli.state import state
from shardvault.errors import InvalidInput
from shardvault.governance.layer import Governance
from shardvault.governance.receipts import verify_receipt
from shardvault.governance.transparency import transparency_report
from shardvault.model import named

# metavars as docs/cli.md names them (tests/test_docs.py), not Typer's types
Cell = Annotated[str, typer.Option("--cell", metavar="J", help="The cell (jurisdiction), e.g. US.")]
Key = Annotated[str, typer.Option("--key", metavar="VKEY", help="The cell's public key (vkey).")]
Cosigner = Annotated[
    str | None,
    typer.Option("--cosigner", metavar="VKEY", help="The partner's public key (vkey)."),
]

audit_app = typer.Typer(help="The tamper-evident audit log of each cell.", no_args_is_help=True)
report_app = typer.Typer(help="Reports computed from the audit log.", no_args_is_help=True)
receipt_app = typer.Typer(help="Deletion receipts.", no_args_is_help=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@audit_app.command("keys")
def audit_keys(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Print the public keys verifiers are given.

    Each cell's key, the partner's witness key and its custodian's key (for destroy
    attestations)."""
    gov = state(ctx).governance()
    keys = {code: gov.cell(code).signer.verifier_key() for code in gov.jurisdictions}
    partner, custodian = gov.partner.vkey(), gov.custodian_key.vkey()
    if json_out:
        print_json({"cells": keys, "partner": partner, "custodian": custodian})
        return
    lines = [f"{code} {vkey}" for code, vkey in keys.items()]
    lines += [f"partner {partner}", f"custodian {custodian}"]
    write_out("".join(f"{line}\n" for line in lines))


@audit_app.command("head")
def audit_head(
    ctx: typer.Context,
    cell: Cell,
    output: Annotated[
        str | None, typer.Option("-o", "--output", metavar="FILE", help="Also write it here.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Sign the cell's current head, have the partner cosign it, store it, print it."""
    destination = output_outside(output, state(ctx).config(), "-o", "the head")  # as get -o
    gov = state(ctx).governance()
    note = gov.publish_head(cell)
    data = note.to_bytes()
    if destination is not None:
        write_output(destination, [data], lambda _written: None)
    checkpoint = Checkpoint.parse(note.text)
    if json_out:
        print_json(
            {
                "cell": cell,
                "origin": checkpoint.origin,
                "size": checkpoint.size,
                "root": _b64(checkpoint.root_hash),
                "note": data.decode("utf-8"),
                "key": gov.cell(cell).signer.verifier_key(),
                "cosigner": gov.partner.vkey(),
            }
        )
        return
    write_out(data.decode("utf-8"))


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    cell: Cell,
    destination: Annotated[
        Path,
        typer.Argument(
            metavar="DESTINATION",
            help="A new directory, or a FILE.tar.",
            parser=path_named("DESTINATION"),
        ),
    ],
    json_out: JsonFlag = False,
) -> None:
    """Sign a fresh head, then write the cell's log and every head for outside verification."""
    check_destination(destination)  # before a head is signed for it
    refuse_deployment_file(destination, state(ctx).config(), "audit export", "the export")
    gov = state(ctx).governance()
    gov.publish_head(cell)
    log = gov.cell(cell).log
    if destination.suffix == ".tar":
        summary = export_to_file(log, destination)
    else:
        summary = export_to_directory(log, destination)
    if json_out:
        print_json(
            {
                "path": str(summary.path),
                "entries": summary.entries,
                "heads": summary.heads,
                "key": gov.cell(cell).signer.verifier_key(),
                "cosigner": gov.partner.vkey(),
            }
        )
        return
    say(f"exported {summary.entries} entries and {summary.heads} head(s) to {summary.path}")


@audit_app.command("verify")
def audit_verify(
    export: Annotated[
        Path,
        typer.Argument(
            metavar="EXPORT", help="An export directory or tar file.", parser=path_named("EXPORT")
        ),
    ],
    key: Key,
    cosigner: Cosigner = None,
    head: Annotated[
        Path | None,
        typer.Option(
            "--head",
            metavar="FILE",
            help="A signed head obtained from the partner.",
            parser=path_named("--head"),
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Verify an export with nothing but it, the public key(s) and a head: no config, no state."""
    trusted = None if head is None else read_given(head)
    if not export.exists():
        raise InvalidInput(f"no export at {export}")
    if not (export.is_dir() or export.is_file()):  # a pipe: opening it waits for a writer
        raise InvalidInput(f"{named(str(export))} is neither an export directory nor a tar file")
    check_readable(export)  # else a directory it cannot list reads as one missing files
    report = verify_export(export, key, trusted_head=trusted, cosigner_key=cosigner)
    newest = report.heads[-1]
    if json_out:
        print_json(
            {
                "origin": report.origin,
                "entries": report.entries,
                "root": _b64(report.root_hash),
                "heads": len(report.heads),
                "cosigned": cosigner is not None,
                "trusted_head": head is not None,
            }
        )
        return
    say(
        f"verified: {report.entries} entries of {report.origin}, {len(report.heads)} signed "
        f"head(s), root {_b64(report.root_hash)}"
        + (f"; cosigned by the partner at {newest.cosigned_at}" if cosigner else "")
        + ("; consistent with the trusted head" if head else "")
    )


def _newest_size(gov: Governance, cell: str) -> int:
    heads = gov.cell(cell).log.heads()
    note = heads[-1] if heads else gov.publish_head(cell)
    return Checkpoint.parse(note.text).size


@audit_app.command("prove-inclusion")
def audit_prove_inclusion(
    ctx: typer.Context,
    cell: Cell,
    index: Annotated[int, typer.Argument(metavar="INDEX", help="The entry's index (0-based).")],
    size: Annotated[
        int | None,
        typer.Option("--size", metavar="N", help="Tree size (default: the newest signed head)."),
    ] = None,
) -> None:
    """Print (as JSON) the RFC 9162 inclusion proof of entry INDEX, checked before printing."""
    gov = state(ctx).governance()
    log = gov.cell(cell).log
    size = _newest_size(gov, cell) if size is None else size
    if not 0 <= index < size <= log.size:
        raise InvalidInput(f"need 0 <= INDEX < SIZE <= {log.size} (got {index}, {size})")
    entry = next(iter(log.iter_entry_bytes(index, index + 1)))
    proof = log.inclusion_proof(index, size)
    root = log.trusted_root(size)  # not from the stored nodes the proof came from
    verify_inclusion(leaf_hash(entry), index, size, proof, root)
    print_json(
        {
            "origin": gov.cell(cell).origin,
            "index": index,
            "size": size,
            "entry": entry.decode("utf-8"),
            "leaf_hash": _b64(leaf_hash(entry)),
            "proof": [_b64(h) for h in proof],
            "root": _b64(root),
        }
    )


@audit_app.command("prove-consistency")
def audit_prove_consistency(
    ctx: typer.Context,
    cell: Cell,
    old: Annotated[int, typer.Argument(metavar="OLD", help="The older tree size.")],
    new: Annotated[
        int | None,
        typer.Argument(metavar="NEW", help="The newer size (default: newest head)."),
    ] = None,
) -> None:
    """Print (as JSON) the RFC 9162 consistency proof from size OLD to NEW, checked first."""
    gov = state(ctx).governance()
    log = gov.cell(cell).log
    new = _newest_size(gov, cell) if new is None else new
    if not 0 <= old <= new <= log.size:
        raise InvalidInput(f"need 0 <= OLD <= NEW <= {log.size} (got {old}, {new})")
    proof = log.consistency_proof(old, new)
    old_root, new_root = log.trusted_root(old), log.trusted_root(new)
    verify_consistency(old, new, proof, old_root, new_root)
    print_json(
        {
            "origin": gov.cell(cell).origin,
            "old_size": old,
            "new_size": new,
            "old_root": _b64(old_root),
            "new_root": _b64(new_root),
            "proof": [_b64(h) for h in proof],
        }
    )


@report_app.command("transparency")
def report_transparency(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", metavar="YYYY-MM-DD", help="First day.")],
    end: Annotated[str, typer.Option("--to", metavar="YYYY-MM-DD", help="Last day (inclusive).")],
    fmt: Annotated[
        str, typer.Option("--format", metavar="table|json|csv", help="The report's format.")
    ] = "table",
) -> None:
    """Requests by requester kind, authority country, data class and decision, per signed head."""
    if fmt not in ("table", "json", "csv"):
        raise InvalidInput("--format must be table, json or csv")
    report = transparency_report(state(ctx).governance(), start, end)
    columns = ["cell", "requester_kind", "authority_country", "data_class", "decision"]
    if fmt == "json":
        print_json(report)
        return
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow([*columns, "requests", "head_origin", "head_size", "head_root"])
        heads = {h.cell: h for h in report.heads}
        for row in report.rows:
            head = heads[row.cell]
            writer.writerow(
                [row.cell, row.requester_kind, row.authority_country, row.data_class,
                 row.decision, row.requests, head.origin, head.size, head.root]
            )  # fmt: skip
        write_out(text.getvalue())
        return
    print_table(
        f"requests {report.start} .. {report.end} (exclusive)"
        if report.end
        else f"requests from {report.start}, no end",
        ["cell", "requester kind", "authority country", "data class", "decision", "requests",
         "head size"],
        [
            [r.cell, r.requester_kind, r.authority_country, r.data_class, r.decision,
             r.requests, r.head_size]
            for r in report.rows
        ],
        min_width=120,
    )  # fmt: skip
    for head in report.heads:
        say(f"{head.cell}: computed from head {head.origin} size {head.size} root {head.root}")


@receipt_app.command("verify")
def receipt_verify(
    receipt: Annotated[
        Path,
        typer.Argument(
            metavar="RECEIPT",
            help="A deletion receipt (signed note).",
            parser=path_named("RECEIPT"),
        ),
    ],
    key: Key,
    cosigner: Cosigner = None,
    custodian: Annotated[
        str | None,
        typer.Option(
            "--custodian", metavar="VKEY", help="The partner custodian's public key (vkey)."
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Check a deletion receipt with public keys only.

    Its signature, head and inclusion proof; that the forget's audit entry commits to
    its subject and time (version 2 and 3); and with --custodian that the custodian
    attests the key's destroy (version 3)."""
    body = verify_receipt(read_given(receipt), key, cosigner, custodian)
    binds = body["v"] >= 2
    attested = custodian is not None  # verify_receipt refused a receipt it does not attest
    if json_out:
        shown = {k: v for k, v in body.items() if k not in ("audit", "destroy_attestation")}
        print_json(shown | {"binds_subject": binds, "destroy_attested": attested})
        return
    say(
        f"valid receipt: {body['tenant']}/{body['subject']} forgotten at {body['forgotten_at']}, "
        f"key {body['key_id']} destroyed, {body['shards_removed']} shard(s) removed; audit entry "
        f"{body['audit']['index']} is in {body['audit']['origin']}"
        + (" (head cosigned by the partner)" if cosigner else "")
    )
    if not binds:
        warn(
            "this is a version 1 receipt: it does not bind its subject or its time (its audit "
            "entry names the subject only by a pseudonym), so it may be another subject's forget"
        )
    if custodian is not None:
        name = custodian.split("+", 1)[0]  # a well-formed vkey: verify_receipt parsed it
        say(f"the key's destroy at {body['forgotten_at']} is attested by the custodian ({name})")
    elif body["v"] >= 3:
        warn(
            "the custodian's attestation of the key's destroy was not checked: pass --custodian "
            "with the partner custodian's public key"
        )
    else:
        warn(
            f"the key's destroy is not attested by the custodian (a version {body['v']} "
            "receipt): it rests on the operator's log only"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
    app.add_typer(report_app, name="report")
    app.add_typer(receipt_app, name="receipt")
