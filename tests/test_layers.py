"""Dependencies point downward (docs/architecture.md), checked from the source itself.

Pure modules do no I/O; core and ports never reach up into orchestration or
interfaces. A test of the imports stands in for an import-linter contract.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shardvault"
IO_MODULES = {
    "os",
    "io",
    "sqlite3",
    "socket",
    "subprocess",
    "shutil",
    "pathlib",
    "tempfile",
    "fcntl",
    "threading",
    "concurrent",
}
PURE = [
    "codec",
    "placement.py",
    "crowding.py",
    "manifest.py",
    "audit/merkle.py",
    "slot_init.py",
    "shown_text.py",
]
LOWER = [
    "codec",
    "placement.py",
    "crowding.py",
    "manifest.py",
    "model.py",
    "shown_text.py",
    "path_limits.py",
    "partner_files.py",
    "errors.py",
    "keys",
    "nodes",
    "catalog",
    "directory.py",
    "durability.py",
    "file_locks.py",
    "group_commit.py",
    "background_flush.py",
    "file_reads.py",
    "io_threads.py",
    "allocator.py",
    "slot_init.py",
]
UPPER = ("shardvault.vault", "shardvault.cli", "shardvault.governance")


def _modules(entry: str) -> list[Path]:
    path = SRC / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", [p for e in PURE for p in _modules(e)], ids=str)
def test_pure_modules_do_no_io(path: Path) -> None:
    used = {name.split(".")[0] for name in _imports(path)}
    assert not used & IO_MODULES, f"{path.relative_to(SRC)} imports {used & IO_MODULES}"


@pytest.mark.parametrize("path", [p for e in LOWER for p in _modules(e)], ids=str)
def test_core_and_ports_never_import_upper_layers(path: Path) -> None:
    upward = {name for name in _imports(path) if name.startswith(UPPER)}
    assert not upward, f"{path.relative_to(SRC)} imports {upward}"


def _diagram_rows() -> dict[str, int]:
    """Each top-level module or package of the Layers diagram in docs/architecture.md by
    its row, counted from the top: a row is a line at the margin (its names joined by
    ` · ` before the description), with the names its indented lines open with."""
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    start = text.index("```\n", text.index("## Layers")) + 4
    rows: dict[str, int] = {}
    row = -1
    for line in text[start : text.index("```", start)].splitlines():
        if not line.startswith(" "):
            row += 1
            names = re.split(r"\s{2,}", line)[0].split(" · ")
        else:
            names = line.split()[:1]
        for name in names:
            rows.setdefault(name.split()[0].rstrip("/").removesuffix(".py"), row)
    return rows


def test_no_module_imports_from_a_row_above_its_own_in_the_layers_diagram() -> None:
    # the diagram said "dependencies point downward only" while config, in its bottom row,
    # imported keys, and custodian_policy, in the row above, keys' port
    rows = _diagram_rows()
    tops = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    placed = sorted(tops & rows.keys())
    assert len(placed) > 30
    upward = []
    for top in placed:
        for path in _modules(top if (SRC / top).is_dir() else f"{top}.py"):
            for name in _imports(path):
                used = name.split(".")[1] if name.startswith("shardvault.") else ""
                if rows.get(used, rows[top]) < rows[top]:
                    upward.append(f"{path.relative_to(SRC)} imports {name}")
    assert upward == []


def test_the_checks_see_the_modules_they_guard() -> None:
    assert len([p for e in LOWER for p in _modules(e)]) > 20
    assert "shardvault.errors" in _imports(SRC / "placement.py")
