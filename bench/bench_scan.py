"""Benchmark ``shardvault scan`` against ``grep -rEn`` of the same patterns on the same tree.

Generates a deterministic tree of source files (default 50,000) across the scanner's
languages, with a few endpoints and clipboard calls sprinkled in, warms the page cache,
then times both tools in the same run and prints files/s, MB/s and the ratio.

    .venv/bin/python bench/bench_scan.py [--files 50000] [--jobs 0] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shardvault.scan import ScanOptions, scan_tree

#: The scanner's pre-filter, spelled as a POSIX ERE for grep.
GREP_PATTERN = "|".join(
    [
        "://",
        r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",
        "[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:",
        "0[xX][0-9A-Fa-f]{7}|[0-9]{8}",
        r"[\"'][[:space:]]*\+[[:space:]]*[\"']",
        r"\.(com|net|org|io|de|ru|cn|eu)[\"'`:]",
        "[Cc]lipboard|[Pp]asteboard|PrimaryClip|primaryClip|paste|Paste|pyperclip",
        r"(string|data|propertyList)\(forType|ForType:|ForClasses|forClasses",
    ]
)

_EXT = [".kt", ".java", ".swift", ".m", ".ts", ".js", ".dart", ".py", ".go", ".c", ".xml", ".json"]
_PLAIN = [
    "    val {a} = compute{b}({c}, {d})",
    "    if ({a} > {n}) {{ return {b}.{c}() }}",
    "    // {a} updates the {b} cache before {c}",
    '    private fun {a}({b}: Int): String = "{c}-{d}"',
    "    for (i in 0 until {n}) {{ {a}[i] = {b}(i) }}",
    '    logger.debug("{a} {b} took {n} ms")',
    "    const {a} = await this.{b}.{c}({d});",
    '    {a} = {b}.get("{c}", {n})',
    "",
]
_SPICE = [
    '    val endpoint = "https://api.example-{a}.com/v1/{b}"',
    '    val dns = "77.88.8.{n}"',
    "    val clip = clipboard.primaryClip",
    '    version = "1.2.{n}.4"',
    '    const h = "10.0.{n}.1";',
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10)))


def generate(root: Path, count: int, seed: int = 4) -> None:
    rng = random.Random(seed)
    for i in range(count):
        folder = root / f"mod{i % 100:02d}" / f"pkg{(i // 100) % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for _ in range(rng.randint(20, 60)):
            template = rng.choice(_SPICE) if rng.random() < 0.01 else rng.choice(_PLAIN)
            w = {k: _word(rng) for k in "abcd"}
            lines.append(template.format(n=rng.randint(1, 250), **w))
        (folder / f"f{i}{_EXT[i % len(_EXT)]}").write_text("\n".join(lines) + "\n")


def tree_bytes(root: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            total += os.path.getsize(os.path.join(dirpath, name))
    return files, total


def time_grep(root: Path) -> tuple[float, int]:
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        subprocess.run(["grep", "-rEn", "-e", GREP_PATTERN, str(root)], stdout=out, check=False)
        elapsed = time.perf_counter() - start
        out.seek(0)
        hits = sum(1 for _ in out)
    return elapsed, hits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--jobs", type=int, default=0, help="scanner processes (0: per CPU)")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs; best kept")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="svscan-bench-"))
    try:
        if not any(root.iterdir()) if root.exists() else True:
            root.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            generate(root, args.files)
            print(f"generated {args.files} files in {time.perf_counter() - t:.1f} s")
        files, size = tree_bytes(root)
        mb = size / 1e6
        time_grep(root)  # warm the page cache for both tools
        # Alternate the tools and keep each one's best run, so a burst of load from
        # something else on the machine does not decide the ratio.
        grep_s = scan_s = float("inf")
        for _ in range(max(1, args.repeat)):
            seconds, grep_hits = time_grep(root)
            grep_s = min(grep_s, seconds)
            report = scan_tree(root, ScanOptions(jobs=args.jobs))
            scan_s = min(scan_s, report.seconds)
        print(
            f"tree: {files} files, {mb:.1f} MB; cpus: {os.cpu_count()}; "
            f"best of {max(1, args.repeat)} alternating runs"
        )
        print(
            f"grep -rEn: {grep_s:.2f} s, {files / grep_s:,.0f} files/s, "
            f"{mb / grep_s:.1f} MB/s ({grep_hits} matching lines)"
        )
        print(
            f"shardvault scan (jobs={args.jobs or os.cpu_count()}): {scan_s:.2f} s, "
            f"{report.files / scan_s:,.0f} files/s, {mb / scan_s:.1f} MB/s "
            f"({len(report.findings)} findings)"
        )
        print(f"speed ratio scan/grep: {grep_s / scan_s:.0%}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
