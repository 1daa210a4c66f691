"""Scanning files for findings, in parallel over files.

A pre-filter of literal-led needles is searched over each whole file; only the lines
they hit are handed to the detectors, so most files and lines cost those fast searches.
(A single alternation of the needles was the first design; CPython's ``re`` ran it 20x
slower than the needles one by one, because an alternation loses the literal-prefix scan.)
Files are shipped to a process pool in batches (regexes are CPU-bound, so threads
would share one core); ``jobs=1`` scans in-process, which tests use for speed.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import Process

from shardvault.scan import clipboard, endpoints
from shardvault.scan.findings import RULES, Finding, SkippedFile, SkipReason
from shardvault.scan.geo import place
from shardvault.scan.languages import CommentMap, language_for
from shardvault.scan.policy import Policy
from shardvault.scan.walk import SourceFile

_SUPPRESS = re.compile(r"shardvault:\s*ignore(?![\w-])(?:\s*\[([^\]\n]*)\])?")
_RULE_ID = re.compile(r"\bSV\d{3}\b")
_COMMENT_ONLY = re.compile(r"^\s*(?://|#|/\*|\*|<!--|;|!)")
_BATCH = 256
_MAX_TEXT = 200
_Needles = tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Limits:
    """What the scanner will not read: files too large, or minified beyond review."""

    max_file_bytes: int = 8 * 1024 * 1024
    max_line_chars: int = 20_000


@dataclass
class FileResults:
    """What scanning a batch of files produced; summed into the report."""

    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    def merge(self, other: FileResults) -> None:
        self.findings.extend(other.findings)
        self.suppressed.extend(other.suppressed)
        self.skipped.extend(other.skipped)
        self.files += other.files
        self.bytes += other.bytes


def _without_waiting(path: str, flags: int) -> int:
    """Open PATH without blocking: a FIFO's open would wait for a writer, perhaps for
    ever. A regular file ignores the flag."""
    return os.open(path, flags | os.O_NONBLOCK)


class Scanner:
    """Everything compiled once per process: the policy's matchers and the pre-filter."""

    def __init__(self, policy: Policy, limits: Limits) -> None:
        self.policy = policy
        self.limits = limits
        self.domains = endpoints.domain_pattern(policy.known_domains())
        needles = [re.compile(n) for n in endpoints.PREFILTER_NEEDLES]
        needles += [re.compile(re.escape(d)) for d in sorted(policy.known_domains())]
        self._endpoint_needles = tuple(needles)
        self._needles: dict[str, tuple[_Needles, _Needles]] = {}

    def needles(self, language: str) -> tuple[re.Pattern[str], ...]:
        """The pre-filter for one language: endpoint needles (with those for its string
        literals' joins and escapes) plus its clipboard words."""
        plain, escapes = self._needle_sets(language)
        return plain + escapes

    def _needle_sets(self, language: str) -> tuple[_Needles, _Needles]:
        """The needles in two: those for any text, and the escape needle, which only a
        text with a backslash can match. Most files have none, and ``in`` tells so at
        several times the speed of a regex searching for a backslash."""
        found = self._needles.get(language)
        if found is None:
            words = clipboard.PREFILTER_NEEDLES.get(language, ())
            adjacent = endpoints.ADJACENT_NEEDLES.get(language, ())
            plain = self._endpoint_needles + tuple(re.compile(n) for n in adjacent)
            plain += tuple(re.compile(re.escape(w)) for w in words)
            escape = endpoints.ESCAPE_NEEDLES.get(language)
            found = plain, (re.compile(escape),) if escape else ()
            self._needles[language] = found
        return found

    def passes(self, text: str, language: str) -> bool:
        """Whether the pre-filter lets ``text`` in ``language`` through to the detectors."""
        return any(n.search(text) for n in self.needles(language))

    def _candidate_lines(self, text: str, language: str) -> list[int]:
        """Start offsets of the lines some needle hits, in order."""
        starts: set[int] = set()
        rfind = text.rfind
        plain, escapes = self._needle_sets(language)
        for needle in plain + escapes if "\\" in text else plain:
            for m in needle.finditer(text):
                starts.add(rfind("\n", 0, m.start()) + 1)
        return sorted(starts)

    def scan_batch(self, files: Iterable[SourceFile]) -> FileResults:
        results = FileResults()
        for source in files:
            self.scan_file(source, results)
        return results

    def scan_file(self, source: SourceFile, out: FileResults) -> None:
        """Scan one file into ``out``; any problem reading it is a skip, never an exception."""
        try:
            with open(source.path, "rb", opener=_without_waiting) as fh:
                info = os.fstat(fh.fileno())
                size = info.st_size
                if not stat.S_ISREG(info.st_mode):  # made a FIFO or device since the walk
                    out.skipped.append(
                        SkippedFile(source.rel, SkipReason.UNREADABLE, "not a regular file")
                    )
                    return
                if size > self.limits.max_file_bytes:
                    out.skipped.append(
                        SkippedFile(
                            source.rel, SkipReason.TOO_LARGE, f"{size} bytes over the limit"
                        )
                    )
                    return
                data = fh.read()
        except OSError as exc:
            out.skipped.append(
                SkippedFile(source.rel, SkipReason.UNREADABLE, exc.strerror or str(exc))
            )
            return
        encoding = _encoding(data)
        if encoding is None:
            out.skipped.append(
                SkippedFile(source.rel, SkipReason.BINARY, "NUL bytes and not UTF-8 or UTF-16")
            )
            return
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            # Scanned anyway: skipping would let one stray byte hide an address.
            text = data.decode(encoding, errors="replace")
            out.skipped.append(
                SkippedFile(
                    source.rel,
                    SkipReason.INVALID_UTF8,
                    f"invalid {_CODEC_NAMES[encoding]} at byte {exc.start}; "
                    "scanned with replacement characters",
                    scanned=True,
                )
            )
        if self.limits.max_line_chars and _has_long_line(text, self.limits.max_line_chars):
            out.skipped.append(
                SkippedFile(
                    source.rel,
                    SkipReason.MINIFIED,
                    f"a line is over {self.limits.max_line_chars} characters (minified?)",
                )
            )
            return
        out.files += 1  # only files scanned count: a gate that scanned none must not pass
        out.bytes += len(data)
        self._scan_text(source, text, out)

    def _scan_text(self, source: SourceFile, text: str, out: FileResults) -> None:
        comments: CommentMap | None = None
        line_no, counted = 1, 0
        for start in self._candidate_lines(text, source.language.name):
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
            line_no += text.count("\n", counted, start)
            counted = start
            above = text.rfind("\n", 0, start - 1) + 1 if start else 0
            previous = text[above : start - 1] if start else ""
            line = text[start:end]
            for finding in self._line_findings(source, line, line_no, previous):
                if comments is None:
                    comments = CommentMap(text, source.language.family)
                if not self.policy.scan_comments and comments.contains(start + finding.column - 1):
                    continue
                if _suppressed(finding.rule_id, ((line, start), (previous, above)), comments):
                    out.suppressed.append(finding)
                else:
                    out.findings.append(finding)

    def _line_findings(
        self, source: SourceFile, line: str, line_no: int, previous: str
    ) -> Iterator[Finding]:
        context = line.strip()
        for ep in endpoints.find_endpoints(line, self.domains, previous, source.language.name):
            country: str | None = None
            if ep.address is not None:
                placement = place(ep.address)
                if placement.special is not None:
                    continue
                country = placement.country
                verdict = self.policy.judge_country(country)
            else:
                assert ep.host is not None
                found, country = self.policy.judge_host(ep.host)
                if found is None:
                    continue
                verdict = found
            explanation = verdict.explanation + (f" ({ep.how})" if ep.how else "")
            yield Finding(
                rule_id=verdict.rule_id,
                severity=RULES[verdict.rule_id].severity,
                path=source.rel,
                line=line_no,
                column=ep.start + 1,
                text=ep.text[:_MAX_TEXT],
                explanation=explanation,
                country=country,
                context=context,
            )
        if source.language.source or source.language.name == "xml":
            for use in clipboard.find_clipboard(line, source.language.name):
                yield Finding(
                    rule_id=use.rule_id,
                    severity=RULES[use.rule_id].severity,
                    path=source.rel,
                    line=line_no,
                    column=use.start + 1,
                    text=use.text[:_MAX_TEXT],
                    explanation=use.explanation,
                    context=context,
                )


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CODEC_NAMES = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8",
    "utf-16": "UTF-16",
    "utf-16-le": "UTF-16",
    "utf-16-be": "UTF-16",
    "utf-32": "UTF-32",
}


def _encoding(data: bytes) -> str | None:
    """The codec to read ``data`` with, or None for a binary file.

    A byte-order mark names the codec (Xcode and Visual Studio write UTF-16 sources, which
    are full of NULs; taken for binary they went unscanned and unreported). Without one, a
    sample whose every other byte is NUL is BOM-less UTF-16. Other NULs make a file binary
    only if it is not valid UTF-8 either: compilers accept a NUL in a comment, and one
    must not hide a whole source file.
    """
    for bom, codec in _BOMS:  # UTF-32 LE first: its mark begins with UTF-16 LE's
        if data.startswith(bom):
            return codec
    sample = data[:8192]
    if b"\0" not in sample:
        return "utf-8"
    pairs = len(sample) // 2
    if pairs and sample[1::2].count(0) == pairs and sample[0::2].count(0) < pairs // 2:
        return "utf-16-le"
    if pairs and sample[0::2].count(0) == pairs and sample[1::2].count(0) < pairs // 2:
        return "utf-16-be"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "utf-8"


def _has_long_line(text: str, limit: int) -> bool:
    """Whether a line is over ``limit``; a text no longer than it is not split at all.
    (The shortcut once tested 20,000, the default, so a lower limit measured whole files.)"""
    return len(text) > limit and max(map(len, text.split("\n"))) > limit


def _suppressed(
    rule_id: str, lines: tuple[tuple[str, int], tuple[str, int]], comments: CommentMap
) -> bool:
    """``shardvault: ignore`` or ``shardvault: ignore[SV101]`` in a comment on the line, or
    alone on the line above (a trailing marker on the line above covers only that line).

    ``lines`` is (line, offset in the file) for the line and the one above. A marker in code
    or a string (``"http://x/shardvault: ignore"``) is not one, and a list naming no rule
    (``ignore[sv-103]``) suppresses nothing: both once silenced every rule on the line.
    """
    (line, start), (previous, above) = lines
    candidates = [(line, start)]
    if _COMMENT_ONLY.match(previous):
        candidates.append((previous, above))
    for candidate, offset in candidates:
        for m in _SUPPRESS.finditer(candidate):
            if not comments.contains(offset + m.start()):
                continue
            if m.group(1) is None or rule_id in _RULE_ID.findall(m.group(1).upper()):
                return True
    return False


# --- process pool plumbing -------------------------------------------------------------

_WORKER: Scanner | None = None


def _init_worker(policy: Policy, limits: Limits) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group: the parent stops the scan; a worker that
    # took it as its own went on to its next batch, and the scan ran to its end
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = Scanner(policy, limits)


def _worker_batch(batch: list[tuple[str, str, str]]) -> FileResults:
    """Scan a batch sent as plain (rel, path, file name) tuples: cheaper to pickle."""
    assert _WORKER is not None
    sources = []
    for rel, path, name in batch:
        language = language_for(name)
        if language is not None:
            sources.append(SourceFile(rel, path, language))
    return _WORKER.scan_batch(sources)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers mid-batch: their results are not wanted. Python 3.14
    has `terminate_workers`; before it, the executor's own table of them is all there is."""
    workers: dict[int, Process] = getattr(pool, "_processes", None) or {}
    for worker in list(workers.values()):
        worker.terminate()


def scan_files(
    files: Iterable[SourceFile], policy: Policy, limits: Limits, jobs: int
) -> FileResults:
    """Scan ``files`` with ``jobs`` processes (1: in this process); order is not kept."""
    total = FileResults()
    if jobs <= 1:
        total.merge(Scanner(policy, limits).scan_batch(files))
        return total
    pending: list[Future[FileResults]] = []
    pool = ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(policy, limits))
    try:
        batch: list[tuple[str, str, str]] = []
        for source in files:
            batch.append((source.rel, source.path, os.path.basename(source.path)))
            if len(batch) >= _BATCH:
                pending.append(pool.submit(_worker_batch, batch))
                batch = []
        if batch:
            pending.append(pool.submit(_worker_batch, batch))
        for future in pending:
            total.merge(future.result())
    except BaseException:
        # stopped (Ctrl-C, SIGTERM) or failed: the batches not started are dropped and the
        # workers stopped, rather than the whole scan run out before the error is said
        _stop_workers(pool)  # first: shutdown forgets them
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return total
