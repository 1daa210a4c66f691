"""Baselines: adopt the scanner on an old codebase and fail only on new findings.

A baseline stores each accepted finding's fingerprint (rule, file, matched text and the
line's content, not its number) with a count, so lines moving does not resurface old
findings, while a second copy of an accepted line is new.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from shardvault.durability import read_bounded
from shardvault.errors import InvalidInput, NewerFormat
from shardvault.model import named, undecodable_escaped_in
from shardvault.path_limits import os_reason
from shardvault.scan.findings import Finding

BASELINE_FORMAT = "shardvault-scan-baseline"
BASELINE_VERSION = 1


def write_baseline(path: Path, findings: Iterable[Finding]) -> int:
    """Write every finding as accepted; returns how many were written."""
    text, count = baseline_text(findings)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write baseline {path}: {exc.strerror}") from exc
    return count


def baseline_text(findings: Iterable[Finding]) -> tuple[str, int]:
    """Every finding as accepted, as a baseline file's text, and how many there are."""
    entries = sorted(
        (
            {"fingerprint": f.fingerprint, "rule_id": f.rule_id, "path": f.path, "text": f.text}
            for f in findings
        ),
        key=lambda e: (e["path"], e["rule_id"], e["fingerprint"]),
    )
    doc = {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "findings": entries}
    text = json.dumps(undecodable_escaped_in(doc), indent=2, ensure_ascii=False)
    return text + "\n", len(entries)


def load_baseline(path: Path) -> Counter[str]:
    """Fingerprints accepted by the baseline, with how many times each was accepted."""
    try:
        doc = json.loads(read_bounded(path).decode("utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read baseline {named(str(path))}: {os_reason(exc)}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"baseline {named(str(path))} is not valid JSON: {exc}") from exc
    _refuse_newer(doc, path)
    if (
        not isinstance(doc, dict)
        or doc.get("format") != BASELINE_FORMAT
        or type(doc.get("version")) is not int  # not true, nor 1.0, which equal 1
        or doc.get("version") != BASELINE_VERSION
        or not isinstance(doc.get("findings"), list)
    ):
        raise InvalidInput(
            f"baseline {path} is not a {BASELINE_FORMAT} file of version {BASELINE_VERSION}"
        )
    counts: Counter[str] = Counter()
    for entry in doc["findings"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
            raise InvalidInput(f"baseline {path}: every finding needs a fingerprint")
        counts[entry["fingerprint"]] += 1
    return counts


def _refuse_newer(doc: object, path: Path) -> None:
    """A baseline of a later version is `NewerFormat` (exit 1: the file is fine, this
    shardvault too old for it), as the scan policy and the config of one are."""
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        return
    version = doc.get("version")
    if type(version) is int and version > BASELINE_VERSION:
        raise NewerFormat(
            f"baseline {named(str(path))} is of format version {version}; this shardvault "
            f"reads version {BASELINE_VERSION}: upgrade shardvault"
        )


def split_by_baseline(
    findings: Iterable[Finding], accepted: Counter[str]
) -> tuple[list[Finding], list[Finding]]:
    """(new findings, findings the baseline accepts); each accepted entry absorbs one match."""
    remaining = Counter(accepted)
    new: list[Finding] = []
    known: list[Finding] = []
    for finding in sorted(findings, key=Finding.sort_key):
        if remaining[finding.fingerprint] > 0:
            remaining[finding.fingerprint] -= 1
            known.append(finding)
        else:
            new.append(finding)
    return new, known
