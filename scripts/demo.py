"""`make demo`: a walkthrough of the embedded vault, driven through the real CLI.

Makes a three-cell deployment in ./demo-run, registers users in several
jurisdictions, stores and reads objects, shows where their shards are,
destroys two storage nodes and still reads everything, then forgets a user.
Every step prints the command it runs, so it doubles as a tutorial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path.cwd() / "demo-run"
CLI = str(Path(sys.executable).with_name("shardvault"))


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def run(*args: str, expect: int = 0, show: bool = True) -> str:
    shown = " ".join(shlex.quote(a) for a in ("shardvault", *args))
    print(f"$ {shown}")
    done = subprocess.run(
        [CLI, "--config", str(ROOT / "shardvault.toml"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if show and done.stdout:
        print(done.stdout.rstrip())
    if done.stderr:
        print(done.stderr.rstrip())
    if done.returncode != expect:
        sys.exit(f"demo: expected exit {expect}, got {done.returncode}")
    return done.stdout


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

    step("Forget alice: her key is destroyed and every shard of hers collected")
    run("forget", "intl", "alice")
    run("get", "intl", "alice", "notes/today.txt", expect=1)
    run("gc", "--grace", "0")
    run("nodes")
    print(
        f"\nThe deployment is in {ROOT}; try: shardvault --config {ROOT / 'shardvault.toml'} --help"
    )


if __name__ == "__main__":
    main()
