"""Clipboard use per platform API: reads and change listeners are flagged, writes noted.

Patterns name the platform API itself (``getPrimaryClip``, ``UIPasteboard.general``,
``navigator.clipboard.read``...) rather than any method called ``getText``, so an
unrelated ``getData`` is not a finding. Each pattern is limited to the languages whose
platform has that API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

READ, LISTEN, WRITE = "SV201", "SV202", "SV203"

_JVM = frozenset({"kotlin", "java", "groovy"})
_APPLE = frozenset({"swift", "objc"})
_WEB = frozenset({"javascript", "typescript", "xml"})
_NOT_ASSIGNED = r"(?!\s*=[^=])"
_ASSIGNED = r"(?=\s*=[^=])"


@dataclass(frozen=True)
class ClipboardPattern:
    rule_id: str
    regex: re.Pattern[str]
    languages: frozenset[str]
    api: str


def _p(rule_id: str, regex: str, languages: frozenset[str], api: str) -> ClipboardPattern:
    return ClipboardPattern(rule_id, re.compile(regex), languages, api)


PATTERNS: tuple[ClipboardPattern, ...] = (
    # Android ClipboardManager (Java getters and Kotlin properties).
    _p(READ, r"\b(?:get|has)PrimaryClip(?:Description)?\s*\(", _JVM, "Android ClipboardManager"),
    _p(READ, r"\.primaryClip(?:Description)?\b" + _NOT_ASSIGNED, _JVM, "Android ClipboardManager"),
    _p(LISTEN, r"\baddPrimaryClipChangedListener\b", _JVM, "Android ClipboardManager"),
    _p(WRITE, r"\b(?:set|clear)PrimaryClip\s*\(", _JVM, "Android ClipboardManager"),
    _p(WRITE, r"\.primaryClip\b" + _ASSIGNED, _JVM, "Android ClipboardManager"),
    # iOS UIPasteboard and macOS NSPasteboard.
    # ``(?:\s*\.\s*|\s+)``, not ``\s*[.\s]\s*``: the latter tries every split of a run of
    # blanks, 8 s on one 19,000-character line.
    _p(
        READ,
        r"\b(?:UIPasteboard\.general|pasteboard|generalPasteboard\]?)(?:\s*\.\s*|\s+)"
        r"(?:string|strings|url|urls|URL|URLs|image|images|color|colors|items|itemProviders"
        r"|hasStrings|hasURLs|hasImages|detectPatterns|detectValues)\b" + _NOT_ASSIGNED,
        _APPLE,
        "UIPasteboard",
    ),
    _p(
        READ,
        r"\b(?:string|data|propertyList)\(forType:|\b(?:string|data|propertyList)ForType:"
        r"|\breadObjects(?:\(forClasses:|ForClasses:)|\bpasteboardItems\b"
        r"|\b(?:value|data)(?:\(forPasteboardType:|ForPasteboardType:)",
        _APPLE,
        "NSPasteboard/UIPasteboard",
    ),
    _p(
        WRITE,
        r"\b(?:UIPasteboard\.general|pasteboard)\s*\.\s*"
        r"(?:string|strings|url|urls|image|images|items)\b" + _ASSIGNED
        + r"|\b(?:setString|setData|writeObjects|setItems|clearContents)\b\s*[(:]",
        _APPLE,
        "UIPasteboard/NSPasteboard",
    ),
    # Web, Electron and paste events.
    _p(
        READ,
        r"\bclipboard\s*\.\s*read(?:Text|HTML|Image|RTF|Bookmark|Buffer)?\s*\("
        r"|\bclipboardData\s*\.\s*getData\s*\(|execCommand\s*\(\s*['\"]paste['\"]",
        _WEB,
        "Clipboard API",
    ),
    _p(
        LISTEN,
        r"addEventListener\s*\(\s*['\"]paste['\"]|\bonpaste\s*=|\bonPaste\s*=",
        _WEB,
        "paste event",
    ),
    _p(
        WRITE,
        r"\bclipboard\s*\.\s*write(?:Text|HTML|Image|RTF|Bookmark|Buffer)?\s*\(",
        _WEB,
        "Clipboard API",
    ),
    # Flutter.
    _p(READ, r"\bClipboard\.(?:getData|hasStrings)\s*\(", frozenset({"dart"}), "Flutter Clipboard"),
    _p(WRITE, r"\bClipboard\.setData\s*\(", frozenset({"dart"}), "Flutter Clipboard"),
    # React Native (@react-native-clipboard/clipboard, expo-clipboard).
    _p(
        READ,
        r"\bClipboard\.(?:getString|getStringAsync|getStrings|getImage|getImageAsync"
        r"|getImagePNG|getImageJPG|getUrlAsync|hasString|hasStringAsync|hasURL|hasUrlAsync"
        r"|hasImageAsync|hasImage|hasNumber|hasWebURL)\s*\(|\buseClipboard\s*\(",
        _WEB,
        "React Native Clipboard",
    ),
    _p(
        LISTEN,
        r"\bClipboard\.(?:addListener|addClipboardListener)\s*\(|\baddClipboardListener\s*\(",
        _WEB,
        "React Native Clipboard",
    ),
    _p(
        WRITE,
        r"\bClipboard\.(?:setString|setStringAsync|setImage|setImageAsync|setUrlAsync)\s*\(",
        _WEB,
        "React Native Clipboard",
    ),
    # Python.
    _p(READ, r"\bpyperclip\.(?:paste|waitForPaste|waitForNewPaste)\s*\(", frozenset({"python"}),
       "pyperclip"),
    _p(READ, r"\.clipboard_get\s*\(|\.selection_get\s*\([^)]*CLIPBOARD", frozenset({"python"}),
       "tkinter clipboard"),
    _p(WRITE, r"\bpyperclip\.copy\s*\(", frozenset({"python"}), "pyperclip"),
    _p(WRITE, r"\.clipboard_(?:append|clear)\s*\(", frozenset({"python"}), "tkinter clipboard"),
    # Go (atotto/clipboard, golang.design/x/clipboard) and Qt.
    _p(READ, r"\bclipboard\.(?:ReadAll|Read|Watch)\s*\(", frozenset({"go"}), "Go clipboard"),
    _p(WRITE, r"\bclipboard\.(?:WriteAll|Write)\s*\(", frozenset({"go"}), "Go clipboard"),
    _p(READ, r"\bclipboard\(\)\s*(?:->|\.)\s*(?:text|mimeData|image|pixmap)\s*\(",
       frozenset({"cpp", "c", "python"}), "Qt QClipboard"),
)  # fmt: skip

#: Pre-filter needles per language: no clipboard pattern for that language can match a
#: line without one of them (the tests check every sample line gets through).
PREFILTER_NEEDLES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_JVM, ("rimaryClip",)),
    **dict.fromkeys(_APPLE, ("asteboard", "orType", "orClasses")),
    **dict.fromkeys(_WEB, ("lipboard", "aste")),
    **dict.fromkeys(("dart", "go", "c", "cpp"), ("lipboard",)),
    "python": ("yperclip", "lipboard", "LIPBOARD"),
}

_EXPLAIN = {
    READ: "reads the clipboard through {api}",
    LISTEN: "watches the clipboard or paste events through {api}",
    WRITE: "writes the clipboard through {api}",
}


@dataclass(frozen=True)
class ClipboardUse:
    rule_id: str
    start: int
    text: str
    explanation: str


def find_clipboard(line: str, language: str) -> list[ClipboardUse]:
    """Clipboard API uses on ``line`` for a file in ``language``; one per matched span."""
    out: list[ClipboardUse] = []
    seen: set[int] = set()
    for pattern in PATTERNS:
        if language not in pattern.languages:
            continue
        for m in pattern.regex.finditer(line):
            if m.start() in seen:
                continue
            seen.add(m.start())
            why = _EXPLAIN[pattern.rule_id].format(api=pattern.api)
            out.append(ClipboardUse(pattern.rule_id, m.start(), m.group().strip(), why))
    return out
