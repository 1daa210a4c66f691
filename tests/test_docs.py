"""The CLI reference documents every command, and the README's quick start is what CI runs."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from shardvault import config, custodian_policy, directory, manifest
from shardvault.audit import entry, export, log, tree
from shardvault.catalog.sqlite import SCHEMA_VERSION
from shardvault.cli import app as cli_app
from shardvault.cli.state import CliState
from shardvault.codec import shardfile
from shardvault.codec.segment import SegmentBinding
from shardvault.custodian_policy import parse_custodian_policy
from shardvault.demo import write_demo
from shardvault.governance import (
    approval_schema,
    approval_signatures,
    principals,
    receipts,
    seen,
    verdicts_file,
)
from shardvault.keys import attestation, hierarchy, key_subjects, keyring, rootkey, tombstones
from shardvault.model import ObjectRef
from shardvault.nodes import hints, journal, marker, pack_records
from shardvault.policy import loader
from shardvault.scan import baseline, render
from shardvault.scan import policy as scan_policy

ROOT = Path(__file__).resolve().parents[1]


def _command_paths() -> list[str]:
    cli_app._register_commands()
    group = typer.main.get_command(cli_app.app)
    paths = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            paths.extend(f"{name} {sub}" for sub in subcommands)
        else:
            paths.append(name)
    return sorted(paths)


def test_every_command_has_a_section_in_the_cli_reference() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text()
    paths = _command_paths()
    assert len(paths) >= 12
    missing = [path for path in paths if f"## `shardvault {path}" not in reference]
    assert missing == []


def _commands() -> dict[str, Any]:
    """Every command of the tree by its path (`"audit verify"`), the root as `""`."""
    cli_app._register_commands()
    root = typer.main.get_command(cli_app.app)
    found: dict[str, Any] = {"": root}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        for sub, leaf in (getattr(command, "commands", None) or {name: command}).items():
            found[name if sub == name and leaf is command else f"{name} {sub}"] = leaf
    return found


def _synopses() -> list[tuple[str, str]]:
    """(command path, what follows it) of each synopsis the docs give: the headings of
    the CLI reference, the scanner's usage block, and the global options table."""
    reference = (ROOT / "docs" / "cli.md").read_text()
    commands = _commands()
    found = []
    for line in re.findall(r"^## `shardvault (.*)`$", reference, re.M):
        words = line.split()
        depth = 2 if " ".join(words[:2]) in commands else 1
        found.append((" ".join(words[:depth]), " ".join(words[depth:])))
    for option in re.findall(r"^\| `(--[a-z-]+ [A-Z]+)` \|", reference, re.M):
        found.append(("", option))
    scanner = (ROOT / "docs" / "scanner.md").read_text()
    start = scanner.index("```\nshardvault scan ") + len("```\nshardvault scan ")
    found.append(("scan", " ".join(scanner[start : scanner.index("\n```", start)].split())))
    return found


def _documented(rest: str, command: Any) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The positional arguments (an optional one in brackets) and the options, each
    with the metavar the docs give it (None for a flag), of one synopsis."""
    takes_value = {
        opt: not param.is_flag
        for param in command.params
        if param.param_type_name == "option"
        for opt in param.opts
    }
    words = [w for w in rest.replace("[", " [ ").replace("]", " ] ").split() if w != "..."]
    positional: list[str] = []
    options: list[tuple[str, str | None]] = []
    depth, i = 0, 0
    while i < len(words):
        word = words[i]
        if word in "[]":
            depth += 1 if word == "[" else -1
        elif word.startswith("-"):
            value = words[i + 1] if takes_value.get(word) else None
            options.append((word, value))
            i += value is not None
        elif word != "options":  # `scan PATH [options]`: see docs/scanner.md
            positional.append(f"[{word}]" if depth else word)
        i += 1
    return positional, options


def _help(path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_app.main([*path.split(), "--help"]) == 0
    return capsys.readouterr().out


def test_the_help_of_every_command_names_what_the_docs_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arguments and option values as the docs name them (`--config PATH`, `TENANT`),
    never by Typer's types (`--config <str>`, `{tenant}`), so the two cannot drift apart.
    (Typer shows an argument's type beside its name, and a flag's as `<bool>`.)"""
    commands = _commands()
    synopses = _synopses()
    assert {path for path, _ in synopses} == set(commands)
    for path, rest in synopses:
        shown = _help(path, monkeypatch, capsys)
        positional, options = _documented(rest, commands[path])
        usage = re.search(rf"Usage: shardvault {path} ?\[OPTIONS\](.*)", shown)
        if path:  # the root's usage is COMMAND [ARGS]...
            assert usage is not None, shown
            used = [w.strip("{}") for w in usage[1].split()]
            assert used == positional, (path, used, positional)
        for option, value in options:
            after = rf"(?:\s+-\w)?\s+{re.escape(value)}(?:\s|$)" if value else r"(?:\s|$)"
            assert re.search(rf"(?<![\w-]){re.escape(option)}{after}", shown, re.M), (
                path,
                option,
                value,
            )
        assert usage is None or not re.search(r"[{\[][a-z_]+[}\]]", usage[0]), usage[0]
        panel = shown[shown.index("─ Options ") : shown.index("╯", shown.index("─ Options "))]
        assert not re.search(r"<(?!bool>)[^>]+>", panel), (path, panel)  # a flag's is <bool>


def test_the_signing_key_says_what_each_command_signs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`approval withdraw --help` said its key signed the verdict: it signs the
    withdrawal, a statement of its own kind (docs/formats.md), never a verdict."""
    for path, signs in (("approval approve", "verdict"), ("approval withdraw", "withdrawal")):
        shown = " ".join(_help(path, monkeypatch, capsys).replace("│", " ").split())
        assert f"signs the {signs}." in shown, path


def test_an_option_several_commands_take_names_its_value_alike_in_each() -> None:
    """`--policy FILE` in scan and policy check is `--policy FILE` in policy test too:
    one option, one name for its value, wherever it is taken. (A list of choices, as
    `--format`'s, is what each command accepts, and may differ.)"""
    named: dict[str, set[tuple[str, str]]] = {}
    for path, param in _value_options():
        if param.metavar is None or "|" in param.metavar:  # unnamed: the test below
            continue
        for option in (opt for opt in param.opts if opt.startswith("--")):
            named.setdefault(option, set()).add((param.metavar, path))
    differing = {opt: sorted(uses) for opt, uses in named.items() if len(dict(uses)) > 1}
    assert differing == {}


def test_every_option_that_takes_a_value_names_it() -> None:
    """`--jurisdiction J`, not Typer's `--jurisdiction TEXT` (or `<str>`): the docs name
    each value, and the help must name it alike (a `metavar`)."""
    unnamed = [
        f"shardvault {path} {'/'.join(param.opts)}".replace("  ", " ")
        for path, param in _value_options()
        if param.metavar is None
    ]
    assert unnamed == [], "these options take a value their help does not name (metavar=)"


def _value_options() -> list[tuple[str, Any]]:
    """(command path, option) of every option of every command that takes a value."""
    return [
        (path, param)
        for path, command in _commands().items()
        for param in command.params
        if param.param_type_name == "option" and not param.is_flag
    ]


def test_a_short_option_stands_for_one_long_option_in_every_command() -> None:
    """`-j` was `--jurisdiction` in subject add and `--jobs` in scan: a hand used to one
    typed the other's meaning, the value refused at best (`-j US` for a job count)."""
    meant: dict[str, set[str]] = {}
    for command in _commands().values():
        for param in (param for param in command.params if param.param_type_name == "option"):
            longs = [opt for opt in param.opts if opt.startswith("--")]
            for short in (opt for opt in param.opts if not opt.startswith("--")):
                meant.setdefault(short, set()).update(longs)
    assert {short: sorted(longs) for short, longs in meant.items() if len(longs) > 1} == {}


def _references() -> dict[str, str]:
    """Each command's part of the reference by its path: its section of docs/cli.md (the
    root's, the text before the first command's), and for scan docs/scanner.md too."""
    reference = (ROOT / "docs" / "cli.md").read_text()
    sections = re.split(r"^(?=## `shardvault )", reference, flags=re.M)
    found = {"": sections[0]}
    for path in _commands():
        for section in sections[1:]:
            if re.match(rf"## `shardvault {re.escape(path)}[ `]", section):
                found[path] = section
    found["scan"] += (ROOT / "docs" / "scanner.md").read_text()
    return found


def test_every_option_a_command_takes_is_named_in_its_reference() -> None:
    """`-v`, short for `--version` in get, stat, rm and where, was in no doc: an option
    the code takes and its reference never names is found only by a slip of the hand.
    (`--json` is named once for all, in the reference's opening.)"""
    references = _references()
    unnamed = [
        f"shardvault {path} {option}".replace("  ", " ")
        for path, command in _commands().items()
        for param in command.params
        if param.param_type_name == "option"
        for option in param.opts
        if option not in ("--help", "--json")
        and not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", references[path])
    ]
    assert unnamed == []


_LONG_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
_FENCED = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`]+)`")


def _options_of(command: Any) -> set[str]:
    return {
        opt for param in command.params if param.param_type_name == "option" for opt in param.opts
    }


def _spans(text: str) -> Iterator[tuple[str, bool]]:
    """(a part of TEXT, whether it is code): each line of a fenced block, each `inline`
    span (which may wrap), and the prose around them, as one."""
    for block in _FENCED.findall(text):
        yield from ((line, True) for line in block.splitlines())
    unfenced = _FENCED.sub(" ", text)
    yield from ((span, True) for span in _INLINE.findall(unfenced))
    yield _INLINE.sub(" ", unfenced), False


def _named_options(text: str, commands: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    """(the command its code names before it, if any; option) of each long option TEXT
    names: `repair --scrub` in gc's section is repair's option, not gc's."""
    for span, code in _spans(text):
        words = span.split()
        named: str | None = None
        at = 0
        while at < len(words):
            pair = " ".join(words[at : at + 2])
            if code and pair in commands and " " in pair:
                named, at = pair, at + 2
                continue
            if code and words[at] in commands:
                named = words[at]
            for option in _LONG_OPTION.findall(words[at]):
                yield named, option
            at += 1


def test_every_option_a_reference_names_is_one_its_command_takes() -> None:
    """The converse of the test above: an option a command's section names (but one it
    names after another command, `repair --scrub`) is one that command takes, or a
    global one; one the opening names, which speaks of every command, is some
    command's. An option renamed or dropped and left in the docs sends a reader to
    a usage error."""
    commands = _commands()
    every = set().union(*map(_options_of, commands.values()))
    wrong = []
    for path, text in _references().items():
        for named, option in _named_options(text, commands):
            command = path if named is None else named
            takes = every if command == "" else _options_of(commands[command])
            takes = takes | _options_of(commands[""]) | {"--help"}
            if option not in takes:
                wrong.append(f"{option} in the reference of '{path}' (taken for '{command}')")
    assert wrong == []


_DECLARED_OPTION = re.compile(r"""add_argument\(\s*["'](--[a-z][a-z-]*)["']""")


def _script_options() -> set[str]:
    """The long options the project's own scripts and benchmarks declare (argparse)."""
    sources = [*(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    return {option for path in sources for option in _DECLARED_OPTION.findall(path.read_text())}


def test_every_option_the_changelog_names_is_one_a_command_takes() -> None:
    """The changelog is where a user learns what changed for them: an option it names
    (after its command, `rm --if-match`, or alone) that the command does not take, or
    neither a command nor one of the project's scripts takes, sends them to a usage
    error."""
    of_other_programs = {"--strict"} | _script_options()  # mypy's; bench/ and scripts/
    commands = _commands()
    every = set().union(*map(_options_of, commands.values())) | {"--help"} | of_other_programs
    global_options = _options_of(commands[""]) | {"--help"}
    wrong = [
        f"{named or 'shardvault'} {option}"
        for named, option in _named_options((ROOT / "CHANGELOG.md").read_text(), commands)
        if option not in (every if named is None else _options_of(commands[named]) | global_options)
    ]
    assert wrong == []


def test_the_commands_without_json_are_those_the_reference_names() -> None:
    """The reference's opening says which commands take no `--json`, and what each does
    instead: one added without it, or given it, leaves that sentence false."""
    opening = _references()[""]
    sentence = re.search(r"Every command that reads or reports\s.*? take none\.", opening, re.S)
    assert sentence is not None
    named = {" ".join(span.split()) for span in _INLINE.findall(sentence[0])}
    listed = {span for span in named if not span.startswith("-")}  # not `--format json`
    without = {
        path for path, cmd in _commands().items() if path and "--json" not in _options_of(cmd)
    }
    assert listed == without


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_persisted_format_is_documented_with_its_version() -> None:
    """Each heading carries the version the code writes, so bumping one without its
    docs fails here."""
    formats = (ROOT / "docs" / "formats.md").read_text()
    headings = {
        "Shard file": shardfile.FORMAT_VERSION,
        "Pack file": pack_records.FILE_VERSION,
        "Compaction journal": journal.VERSION,
        "Node marker": marker.VERSION,
        "Manifest": manifest.FORMAT_VERSION,
        "Keyring": keyring.VERSION,
        "Config": config.FORMAT_VERSION,
        "Catalog schema": SCHEMA_VERSION,
        "Subject directory (schema": directory.SCHEMA_VERSION,
        "Audit log, signed heads, export": log.LOG_VERSION,
        "Governance registry (schema": principals.SCHEMA_VERSION,
        "Approvals (schema": approval_schema.SCHEMA_VERSION,
        "Partner's verdicts (schema": verdicts_file.SCHEMA_VERSION,
        "Deletion receipt": receipts.RECEIPT_VERSION,
        "Hung-node notes": hints.VERSION,
        "Segment encryption": _tag_version(_segment_label()),
        "Wrapped data key": hierarchy.DATA_KEY_BLOB_VERSION,
        "Wrapped subject key": rootkey.BLOB_VERSION,
        "Access policy and custodian policy": loader.POLICY_VERSION,
        "Signed approval statement": _tag_version(approval_signatures.STATEMENT_TAG),
        "Signed withdrawal statement": _tag_version(approval_signatures.WITHDRAWAL_TAG),
        "Seen audit positions": seen.SEEN_VERSION,
        "Destroy attestation": _tag_version(attestation.HEADER.encode()),
        "Scan policy, baseline and report": scan_policy.POLICY_VERSION,
    }
    for title, version in headings.items():
        if "(" not in title:
            title += " (version"
        assert re.search(rf"^## {re.escape(title)} {version}\)", formats, re.M), title
    # and no format is described without its version pinned here
    titles = re.findall(r"^## (.*?) \((?:version|schema) [0-9]+\)", formats, re.M)
    assert len(titles) == len(re.findall(r"^## ", formats, re.M))
    assert sorted(titles) == sorted(title.split(" (")[0] for title in headings)
    # a heading naming several formats names one version: theirs
    assert loader.POLICY_VERSION == custodian_policy.CUSTODIAN_POLICY_VERSION
    assert scan_policy.POLICY_VERSION == baseline.BASELINE_VERSION == render.JSON_VERSION
    assert log.LOG_VERSION == entry.ENTRY_VERSION == export.EXPORT_VERSION == tree.TREE_VERSION
    assert tombstones.SCHEMA_VERSION == key_subjects.SCHEMA_VERSION == 2
    assert "`PRAGMA user_version` = 2 (a newer one\nis refused" in formats
    assert "`PRAGMA user_version`\n= 2 (a newer one is refused)" in formats


def _tag_version(tag: bytes) -> int:
    """The N of a domain tag ending `/vN` (a newline after it or not)."""
    found = re.fullmatch(rb".*/v([0-9]+)\n?", tag)
    assert found is not None, tag
    return int(found[1])


def _segment_label() -> bytes:
    """The label that opens every segment's associated data, read from a binding's bytes."""
    prefix = SegmentBinding(ObjectRef("t", "s", "k"), 1, bytes(16)).prefix()
    return prefix[4 : 4 + int.from_bytes(prefix[:4], "big")]


def test_the_architecture_layers_name_every_module() -> None:
    """The layer diagram is where a reader finds a module's place: one left out of it
    (a split, a new helper) is a module nobody is told of. Each top-level module and
    package of src/shardvault, and each module of vault/, is named there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    layers = _block(text, "## Layers", "")
    named = set(re.findall(r"[a-z_]+", layers))
    package = ROOT / "src" / "shardvault"
    modules = {p.stem for p in package.glob("*.py")} | {
        p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    modules |= {p.stem for p in (package / "vault").glob("*.py")}
    missing = sorted(modules - named - {"__init__", "__main__"})
    assert missing == [], f"docs/architecture.md, Layers, does not name {missing}"


def _block(text: str, after: str, language: str) -> str:
    """The first fenced block of `language` after the line `after`."""
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_custodian_policy_example_loads_as_written() -> None:
    """The partner copies this block to start its policy: a key placed under the last
    `[[grant]]` belongs to that grant in TOML, and the loader refuses it there."""
    example = _block((ROOT / "docs" / "policy.md").read_text(), "## Custodian policy", "toml")
    policy = parse_custodian_policy(example)
    assert policy.approval_quorum == 2
    assert set(policy.approvers) == {"dpo", "partner-officer"}


def test_the_config_reference_quotes_the_demos_approvers(tmp_path: Path) -> None:
    """docs/formats.md quoted the demo's two approvers after it had four."""
    write_demo(tmp_path)
    written = config.load(tmp_path / "shardvault.toml").governance.approvers
    formats = (ROOT / "docs" / "formats.md").read_text()
    quoted = re.search(r"init --demo` writes both, with `approvers = (\[.*?\])`", formats)
    assert quoted is not None
    assert json.loads(quoted[1]) == list(written)


def test_the_audit_entry_format_names_every_result_governance_writes() -> None:
    """An auditor reads `result` by the table of docs/audit-log.md: a withdrawal that
    failed wrote `failed`, which the table did not name."""
    row = next(
        line
        for line in (ROOT / "docs" / "audit-log.md").read_text().splitlines()
        if line.startswith("| `result`")
    )
    written = {
        found
        for module in (ROOT / "src" / "shardvault").rglob("*.py")
        for found in re.findall(r'\bresult="([a-z-]+)"', module.read_text())
    }
    assert len(written) >= 5
    assert sorted(result for result in written if f"`{result}`" not in row) == []


def test_the_global_options_name_every_default_purpose_a_command_takes() -> None:
    """A command's default purpose is what the audit log records and the custodian is
    shown when `--purpose` is left out: `policy check` resolved its caller with the
    purpose `policy`, which the reference did not name (and which nothing recorded)."""
    row = next(
        line
        for line in (ROOT / "docs" / "cli.md").read_text().splitlines()
        if line.startswith("| `--purpose P`")
    )
    listed = re.search(r"\(default per command: ([^)]*)\)", row)
    assert listed is not None
    named = set(re.findall(r"`([a-z-]+)`", listed[1]))
    taken = {
        found
        for module in (ROOT / "src" / "shardvault" / "cli").glob("*.py")
        for found in re.findall(r'\brequest\("([a-z-]+)"\)', module.read_text())
    }
    otherwise = inspect.signature(CliState.request).parameters["default_purpose"].default
    assert len(taken) >= 4
    assert sorted(taken | {otherwise}) == sorted(named)


def test_the_readmes_commands_run_as_written(tmp_path: Path) -> None:
    # all but the two that need what a reader must first make: approvals, a token
    commands = [
        line.split("  #")[0].strip()
        for line in _block((ROOT / "README.md").read_text(), "## Using it", "sh").splitlines()
        if "forget" not in line and "$TOKEN" not in line
    ]
    assert len(commands) >= 10
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv the README's PATH line names
    (tmp_path / "beach.jpg").write_bytes(os.urandom(5000))
    (tmp_path / "app-src").mkdir()
    (tmp_path / "app-src" / "feed.py").write_text("print('hello')\n")
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)],
        cwd=tmp_path, capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.jpg").read_bytes() == (tmp_path / "beach.jpg").read_bytes()
    assert (tmp_path / "audit-us.tar").is_file()


def test_the_readmes_library_example_runs_as_written(tmp_path: Path) -> None:
    write_demo(tmp_path / "mydeploy")
    example = _block((ROOT / "README.md").read_text(), "As a library:", "python")
    done = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped,
    spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_resolves() -> None:
    """A link to a file or heading that was renamed (a format's version in its title)
    led nowhere, and nothing said so."""
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target}")
    assert broken == []
