"""Which files are source or config, in what language, and where their comments are.

The comment finder is a small lexer, not a parser: it knows each family's string
quotes so that ``"https://..."`` is not mistaken for a ``//`` comment, which is all the
scanner needs to honour a policy that says comments do not count.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    """A language and its comment family; ``source`` says whether clipboard rules apply."""

    name: str
    family: str
    source: bool


_C = "c"
_LANGS: dict[str, Language] = {
    ext: Language(name, family, source)
    for name, family, source, exts in (
        ("kotlin", _C, True, ".kt .kts"),
        ("java", _C, True, ".java"),
        ("groovy", _C, True, ".gradle .groovy"),
        ("swift", _C, True, ".swift"),
        ("objc", _C, True, ".m .mm"),
        ("c", _C, True, ".c .h"),
        ("cpp", _C, True, ".cc .cpp .cxx .hpp .hh .hxx"),
        ("javascript", _C, True, ".js .jsx .mjs .cjs"),
        ("typescript", _C, True, ".ts .tsx .mts .cts"),
        ("dart", _C, True, ".dart"),
        ("go", _C, True, ".go"),
        ("python", "python", True, ".py .pyw"),
        ("xml", "xml", False, ".xml .plist .xib .storyboard .html .htm"),
        ("json", "none", False, ".json"),
        ("yaml", "hash", False, ".yaml .yml"),
        ("properties", "properties", False, ".properties"),
        ("env", "hash", False, ".env"),
        ("toml", "hash", False, ".toml"),
        ("ini", "ini", False, ".ini .cfg .conf"),
    )
    for ext in exts.split()
}


def language_for(name: str) -> Language | None:
    """Language of a file by its name; ``.env``, ``.env.local`` and ``prod.env`` are env files."""
    lower = name.lower()
    if lower == ".env" or lower.startswith(".env."):
        return _LANGS[".env"]
    dot = lower.rfind(".")
    if dot <= 0:
        return None
    return _LANGS.get(lower[dot:])


_STR = r'"(?:\\.|[^"\\\n])*"' + r"|'(?:\\.|[^'\\\n])*'"
_LEXERS: dict[str, re.Pattern[str]] = {
    _C: re.compile(
        r'(?P<s>"""[\s\S]*?"""|`(?:\\.|[^`\\])*`|' + _STR + r")"
        r"|(?P<c>//[^\n]*|/\*[\s\S]*?(?:\*/|\Z))"
    ),
    "python": re.compile(
        r"(?P<s>\"\"\"[\s\S]*?(?:\"\"\"|\Z)|'''[\s\S]*?(?:'''|\Z)|" + _STR + r")|(?P<c>#[^\n]*)"
    ),
    "hash": re.compile(r"(?P<s>" + _STR + r")|(?P<c>(?:(?<=\s)|^)#[^\n]*)", re.M),
    "properties": re.compile(r"(?P<c>^[ \t]*[#!][^\n]*)", re.M),
    "ini": re.compile(r"(?P<c>^[ \t]*[#;][^\n]*)", re.M),
    "xml": re.compile(r"(?P<c><!--[\s\S]*?(?:-->|\Z))"),
}


class CommentMap:
    """Answers "is this offset inside a comment?" for one file's text.

    Lexes lazily, only as far as the offsets asked about: the engine asks in increasing
    order and only for lines with a finding, so most of a file is never lexed.
    """

    def __init__(self, text: str, family: str) -> None:
        lexer = _LEXERS.get(family)
        self._tokens = lexer.finditer(text) if lexer is not None else iter(())
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._lexed_to = -1 if lexer is not None else len(text) + 1

    def contains(self, offset: int) -> bool:
        while self._lexed_to <= offset:
            token = next(self._tokens, None)
            if token is None:
                self._lexed_to = 1 << 62
                break
            self._lexed_to = token.end()
            if token.lastgroup == "c":
                self._starts.append(token.start())
                self._ends.append(token.end())
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]
