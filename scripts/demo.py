"""`make demo`: a walkthrough of the embedded vault, driven through the real CLI.

Makes a three-cell deployment in ./demo-run, registers users in several
jurisdictions, stores and reads objects, shows where their shards are,
destroys two storage nodes and still reads everything, then replaces them and
rebuilds the lost shards on the new nodes with `repair`. Then governance:
principals with tokens, a foreign government's request refused by rule, a read
the operator's policy allows but the partner's custodian refuses, a domestic
legal request approved by two officers (each signing with their own key, which
the partner's custodian checks; an approval written into the operator's book
without their signatures is refused), the forget of a user (approved, with a
signed receipt carrying the custodian's attestation that it destroyed her key),
an outside verification of the audit log and a transparency report. Every step
prints the command it runs, so it doubles as a tutorial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

ROOT = Path.cwd() / "demo-run"
CLI = str(Path(sys.executable).with_name("shardvault"))


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def run(*args: str, expect: int = 0, show: bool = True, config: bool = True) -> str:
    shown = " ".join(
        shlex.quote(a) if not a.startswith("svt_") else a[:12] + "…" for a in ("shardvault", *args)
    )
    print(f"$ {shown}")
    done = subprocess.run(
        [CLI, *(["--config", str(ROOT / "shardvault.toml")] if config else []), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT if not config else None,
    )
    if show and done.stdout:
        print(done.stdout.rstrip())
    if done.stderr:
        print(done.stderr.rstrip())
    if done.returncode != expect:
        sys.exit(f"demo: expected exit {expect}, got {done.returncode}")
    return done.stdout if done.returncode == 0 else done.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    files = ROOT / "files"

    step("A deployment with three cells (US, SG, EU), six nodes each over three facilities")
    run("init", "--demo", str(ROOT))
    run("nodes")

    step("Users of two apps, each with a home jurisdiction")
    run("subject", "add", "intl", "alice", "--jurisdiction", "US")
    run("subject", "add", "intl", "bao", "--jurisdiction", "SG")
    run("subject", "add", "domestic", "chloe", "--jurisdiction", "EU")

    step("Store objects: encrypted, erasure-coded 4+2, placed in the home cell")
    files.mkdir(parents=True)
    (files / "photo.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    (files / "note.txt").write_text("meet at noon\n")
    run("put", "intl", "alice", "photos/2026/beach.jpg", str(files / "photo.bin"))
    run("put", "intl", "alice", "notes/today.txt", str(files / "note.txt"))
    run("put", "intl", "bao", "profile.json", str(files / "note.txt"))
    run("put", "domestic", "chloe", "avatar.png", str(files / "photo.bin"))
    run("ls", "intl", "alice")

    step("Read them back, byte for byte")
    run("get", "intl", "alice", "photos/2026/beach.jpg", "-o", str(files / "beach.out"))
    assert sha256(files / "beach.out") == sha256(files / "photo.bin")
    print("sha256 matches the original")

    step("Where the shards are: six nodes, all in the US, two per facility")
    run("where", "intl", "alice", "photos/2026/beach.jpg")
    shards = json.loads(
        run("where", "intl", "alice", "photos/2026/beach.jpg", "--json", show=False)
    )["shards"]
    assert {s["jurisdiction"] for s in shards} == {"US"}
    run("where", "intl", "bao", "profile.json")

    step("Destroy two of the six nodes holding alice's photo")
    doomed = sorted({s["node"] for s in shards if s["index"] in (0, 3)})
    for node in doomed:
        path = ROOT / "nodes" / "US" / node
        print(f"$ rm -rf {path}")
        shutil.rmtree(path)
    run("get", "intl", "alice", "photos/2026/beach.jpg", "-o", str(files / "beach.again"))
    assert sha256(files / "beach.again") == sha256(files / "photo.bin")
    print(f"still identical with {', '.join(doomed)} gone: any 4 of 6 shards suffice")
    replace_nodes(doomed, shards)

    governance(files)

    step("Forget alice: needs two approvals; her key is destroyed, her shards collected")
    approval = pending(run("forget", "intl", "alice", expect=1, show=False))
    for officer in OFFICERS:
        sign(officer, approval)
    receipt = files / "receipt.note"
    run("--approval", approval, "forget", "intl", "alice", "--receipt", str(receipt), show=False)
    print(f"(the signed receipt, {receipt.stat().st_size} bytes, is in {receipt})")
    keys = json.loads(run("audit", "keys", "--json", show=False))
    # the cell's key and the log prove what the operator recorded; the custodian's key,
    # that the partner itself destroyed alice's key
    run("receipt", "verify", str(files / "receipt.note"), "--key", keys["cells"]["US"],
        "--cosigner", keys["partner"], "--custodian", keys["custodian"],
        config=False)  # fmt: skip
    run("get", "intl", "alice", "notes/today.txt", expect=1)
    run("gc", "--grace", "0")
    run("nodes")

    audit_and_report(files)
    print(
        f"\nThe deployment is in {ROOT}; try: shardvault --config {ROOT / 'shardvault.toml'} --help"
    )


def replace_nodes(doomed: list[str], shards: list[dict[str, object]]) -> None:
    step("Replace them: mark the lost nodes down, add new ones, rebuild what was lost")
    config = ROOT / "shardvault.toml"
    text = config.read_text()
    facility = {s["node"]: s["facility"] for s in shards}
    for number, node in enumerate(doomed, start=7):
        new = f"us-n{number}"
        print(f'$ edit {config.name}: {node} state = "down"; add {new} in {facility[node]}')
        text = text.replace(
            f'path = "nodes/US/{node}"\n', f'path = "nodes/US/{node}"\nstate = "down"\n'
        )
        text += (
            f'\n[[nodes]]\nid = "{new}"\njurisdiction = "US"\nfacility = "{facility[node]}"\n'
            f'backend = "local"\npath = "nodes/US/{new}"\n'
        )
        print(f"$ mkdir {ROOT / 'nodes' / 'US' / new}")
        (ROOT / "nodes" / "US" / new).mkdir()
    config.write_text(text)
    run("repair", "--scrub")
    run("where", "intl", "alice", "photos/2026/beach.jpg")
    run(
        "get", "intl", "alice", "photos/2026/beach.jpg", "-o", str(ROOT / "files" / "beach.rebuilt")
    )
    assert sha256(ROOT / "files" / "beach.rebuilt") == sha256(ROOT / "files" / "photo.bin")
    print("every shard is back on an active node: the photo can lose two nodes again")


OFFICERS = ("dpo", "partner-officer")
TOKENS: dict[str, str] = {}


def pending(error_line: str) -> str:
    """The approval id in a refusal's 'retry with --approval ID'."""
    return error_line.strip().rsplit("--approval ", 1)[1]


def sign(officer: str, approval: str) -> None:
    """OFFICER approves, signing with the key only they hold (the partner's custodian
    checks it against the public key in its own policy)."""
    key = ROOT / "approvers" / f"{officer}.skey"
    run("--token", TOKENS[officer], "approval", "approve", approval, "--signing-key", str(key))


def principal(ident: str, *options: str, tenant: str = "intl") -> None:
    TOKENS[ident] = run("principal", "add", ident, "--tenant", tenant, *options, show=False).strip()


def governance(files: Path) -> None:
    step("Principals: each with a tenant, a kind, a location; API tokens stored as salted hashes")
    principal("svc-api", "--kind", "service", "--location", "US")
    principal("sam", "--kind", "employee", "--location", "US", "--role", "support")
    principal("dpo", "--kind", "employee", "--location", "US", "--role", "privacy")
    principal("partner-officer", "--kind", "partner-auditor", "--location", "US")
    # the other tenant's approvers: an approver signs only its own tenant's approvals
    for ident, kind in (("domestic-dpo", "employee"), ("domestic-officer", "partner-auditor")):
        principal(ident, "--kind", kind, "--location", "EU", tenant="domestic")
    for ident, authority, country in (
        ("cn-mps", "ministry-of-public-security", "CN"),
        ("us-doj", "us-department-of-justice", "US"),
    ):
        principal(
            ident, "--kind", "external-requester", "--location", country,
            "--authority", authority, "--authority-country", country,
        )  # fmt: skip
    run("principal", "ls")
    run("--token", TOKENS["svc-api"], "--purpose", "serve-user",
        "get", "intl", "alice", "notes/today.txt")  # fmt: skip

    step("A foreign government asks for a US user's data: refused by rule, and logged")
    run("--token", TOKENS["cn-mps"], "--purpose", "lawful-request",
        "get", "intl", "alice", "notes/today.txt", expect=1)  # fmt: skip

    step("Support may read by the operator's policy, but the partner's custodian refuses the key")
    run("policy", "check", "--principal", "sam", "--action", "read", "--tenant", "intl",
        "--jurisdiction", "US", "--purpose", "support-ticket", show=False)  # fmt: skip
    run("--token", TOKENS["sam"], "--purpose", "support-ticket",
        "get", "intl", "alice", "notes/today.txt", expect=1)  # fmt: skip

    step("A domestic legal request: pending until an operator and a partner officer approve")
    request = ("--token", TOKENS["us-doj"], "--purpose", "lawful-request")
    approval = pending(
        run(*request, "get", "intl", "alice", "notes/today.txt", expect=1, show=False)
    )
    run(*request, "--approval", approval, "get", "intl", "alice", "notes/today.txt", expect=1)
    for officer in OFFICERS:
        sign(officer, approval)
    run(*request, "--approval", approval, "get", "intl", "alice", "notes/today.txt")
    forged_approval(request)


def forged_approval(request: tuple[str, ...]) -> None:
    step("The operator writes a met approval into its own book: the partner's custodian refuses")
    approval = pending(
        run(*request, "get", "intl", "alice", "notes/today.txt", expect=1, show=False)
    )
    book = ROOT / "state" / "cells" / "US" / "approvals.sqlite"
    print(f"$ sqlite3 {book} \"INSERT INTO signatures ... (both officers, 'approve')\"")
    with closing(sqlite3.connect(book)) as db, db:
        for officer in OFFICERS:
            db.execute(
                "INSERT INTO signatures (approval, approver, verdict, at) VALUES (?, ?, ?, ?)",
                (approval, officer, "approve", time.time()),
            )
    run("approval", "ls", "--all")  # the operator's book: approved, 2/2
    run(*request, "--approval", approval, "get", "intl", "alice", "notes/today.txt", expect=1)


def audit_and_report(files: Path) -> None:
    step("An outsider verifies the US audit log: the export, public keys, a head from the partner")
    keys = json.loads(run("audit", "keys", "--json", show=False))
    run("audit", "head", "--cell", "US", "-o", str(files / "head-from-partner.note"))
    run("audit", "export", "--cell", "US", str(files / "audit-us.tar"))
    run("audit", "verify", str(files / "audit-us.tar"), "--key", keys["cells"]["US"],
        "--cosigner", keys["partner"], "--head", str(files / "head-from-partner.note"),
        config=False)  # fmt: skip
    proof = json.loads(run("audit", "prove-inclusion", "--cell", "US", "0", show=False))
    print(f"inclusion proof of entry 0: {len(proof['proof'])} hashes up to root {proof['root']}")

    step("Someone edits one entry of the export: verification fails")
    tampered = files / "audit-us-tampered"  # the same export, as a directory
    run("audit", "export", "--cell", "US", str(tampered), show=False)
    entries = tampered / "entries.jsonl"
    entries.write_bytes(
        entries.read_bytes().replace(b'"decision":"deny"', b'"decision":"allow"', 1)
    )
    run("audit", "verify", str(tampered), "--key", keys["cells"]["US"], expect=1, config=False)

    step("Transparency report, computed from the audit log alone, tied to signed heads")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    run("report", "transparency", "--from", today, "--to", today)
    run("report", "transparency", "--from", today, "--to", today, "--format", "csv")


if __name__ == "__main__":
    main()
