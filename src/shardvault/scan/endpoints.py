"""Finding network endpoints in one line of source: IP literals, URLs and hostnames.

Each detector is a regular expression plus a check that turns a look-alike away: an IP
needs four octets with nothing numeric glued on (so OIDs and ``1.2.3.4.5`` fail), a
dotted quad after ``version``/``ver``/``build`` is a version, an IPv6 candidate must
parse. Obfuscations that still travel on one line are undone: string literals joined
with ``+`` (or side by side, where the compiler joins them), escapes inside a literal
(``\\x2e``, ``\\u0037``, octal, ``\\/``: each only in the languages that have it), and IPv4
addresses written as one integer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import unquote

from shardvault.scan.geo import IPAddress

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}"
    r"(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?:%[\w]+)?(?![\w:.])"
)
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{1,20})://([^\s/?#\"'`<>\\|{}^,;()]*)")
_URL_TAIL = re.compile(r"[^\s\"'`<>\\|{}^,;]*")
_INTEGER = re.compile(
    r"(?<![\w.])0[xX][0-9A-Fa-f]{7,8}(?![\w.])|(?:(?<=[(=])|(?<=[(=] ))\d{8,10}(?![\w.])"
)
_NET_CONTEXT = re.compile(r"(?i)inet|addr|\bip\b|host|socket|connect|server|endpoint|htonl")
_VERSION_BEFORE = re.compile(
    r"(?i)(?:version|\bver\b|\brev\b|release|\bbuild|semver|\bsdk)\w*\W{0,6}$|[\w-]+:[\w.-]+:$"
)
_VERSION_AFTER = re.compile(r"-[A-Za-z]")
_VERSION_KEY_LINE = re.compile(r"(?i)version\w*(?:</key>)?\W*$")
_TLDS = (
    "com|net|org|io|co|dev|app|info|biz|cloud|ai|me|tv|xyz|online|site|tech|"
    "us|uk|de|fr|cn|ru|jp|kr|in|br|eu|ch|nl|se|no|fi|es|it|cz|at|be|dk|ie|au|ca|hk|tw|sg|ir|kp"
)
_QUOTED_HOST = re.compile(
    r"[\"'`]((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:" + _TLDS + r"))"
    r"(?::\d{1,5})?[\"'`]"
)
_HOSTNAME = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})$"
)
_NO_HOST_SCHEMES = frozenset({"file", "content", "data", "jar", "android.resource", "res"})

#: The engine's pre-filter: a line can only yield an endpoint if one of these matches it.
#: Each starts with a literal character, which CPython's ``re`` searches for at about
#: 1 GB/s; one alternation of them all runs at under 50 MB/s (measured; see docs).
PREFILTER_NEEDLES = (
    r"://",
    r"\.\d{1,3}\.\d{1,3}\.\d",
    r":[0-9A-Fa-f]{0,4}:",
    r"\+\s*[\"']",
    r"0[xX][0-9A-Fa-f]{7}",
    r"\( ?\d{8}",
    r"= ?\d{8}",
    r"\.(?:" + _TLDS + r")[\"'`:]",
)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint found on a line; ``start`` is a 0-based offset into that line."""

    start: int
    text: str
    address: IPAddress | None = None
    host: str | None = None
    how: str = ""


def domain_pattern(domains: Iterable[str]) -> re.Pattern[str] | None:
    """Exact matcher for the policy's domains (and their subdomains) as bare words."""
    names = sorted({d.lower() for d in domains}, key=len, reverse=True)
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(
        rf"(?<![\w.-])(?:[A-Za-z0-9-]+\.)*(?:{alternatives})(?![\w-]|\.[\w-])", re.IGNORECASE
    )


def find_endpoints(
    line: str, domains: re.Pattern[str] | None = None, previous: str = "", language: str = ""
) -> list[Endpoint]:
    """Every endpoint on ``line``, once each: URL hosts first, then bare literals outside URLs.

    ``previous`` is the line before, for versions whose key sits on its own line (plists).
    ``language`` (the file's) says which escapes its literals undo and whether literals
    side by side are joined; without one, only ``+`` joins.
    """
    found: list[Endpoint] = []
    taken: list[tuple[int, int]] = []
    for m in _URL.finditer(line):
        tail = _URL_TAIL.match(line, m.end())
        end = tail.end() if tail else m.end()
        taken.append((m.start(), end))
        endpoint = _url_endpoint(m.group(1).lower(), m.group(2), m.start(), line[m.start() : end])
        if endpoint is not None:
            found.append(endpoint)

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    for m in _IPV6.finditer(line):
        address = _parse_ipv6(m.group())
        if address is not None and free(*m.span()):
            taken.append(m.span())
            found.append(Endpoint(m.start(), m.group(), address))
    version_key = bool(previous) and _VERSION_KEY_LINE.search(previous) is not None
    for m in _IPV4.finditer(line):
        if free(*m.span()) and not (version_key or _looks_like_version(line, *m.span())):
            found.append(Endpoint(m.start(), m.group(), ipaddress.IPv4Address(m.group())))
    if _NET_CONTEXT.search(line):
        for m in _INTEGER.finditer(line):
            integer_ip = _integer_ipv4(m.group())
            if integer_ip is not None and free(*m.span()):
                found.append(Endpoint(m.start(), m.group(), integer_ip, how="integer-encoded"))
    for pattern, group in ((domains, 0), (_QUOTED_HOST, 1)):
        if pattern is None:
            continue
        for m in pattern.finditer(line):
            if free(*m.span(group)):
                taken.append(m.span(group))
                found.append(Endpoint(m.start(group), m.group(group), host=m.group(group).lower()))
    rules = _RULES.get(language, _DEFAULT_RULES)
    found.extend(_literal_endpoints(line, domains, rules, version_key))
    return found


def _url_endpoint(scheme: str, authority: str, start: int, text: str) -> Endpoint | None:
    if scheme in _NO_HOST_SCHEMES or not authority:
        return None
    hostport = unquote(authority.rsplit("@", 1)[-1])
    if hostport.startswith("["):
        address = _parse_ipv6(hostport[1:].split("]", 1)[0])
        return Endpoint(start, text, address, how="in URL") if address else None
    host = _ascii_host(hostport.split(":", 1)[0])
    if host is None:
        return None
    host = host.rstrip(".")
    try:
        return Endpoint(start, text, ipaddress.IPv4Address(host), how="in URL")
    except ValueError:
        pass
    v4 = _url_ipv4(host)
    if v4 is not None:
        how = "integer-encoded" if "." not in host else "hex/octal or short-form"
        return Endpoint(start, text, v4, how=f"{how} host in URL")
    if _HOSTNAME.match(host):
        return Endpoint(start, text, host=host.lower(), how="in URL")
    return None


def _ascii_host(host: str) -> str | None:
    """The host as DNS sees it: an internationalised name (``百度.com``, ``api。baidu。com``
    with ideographic dots, full-width letters) in punycode, as browsers send it. Such hosts
    failed the ASCII hostname check and were reported as nothing at all."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return None


_URL_IPV4_PART = re.compile(r"0[xX][0-9A-Fa-f]*|0[0-7]*|[1-9]\d*")


def _url_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """A URL host in any IPv4 form ``inet_aton`` and browsers (WHATWG URL) accept:
    ``0x4D.0x58.8.8``, octal ``0115.0130.010.010``, ``77.88.2056``, ``1297614856``.
    Only the dotted-decimal form was recognised; the rest passed as no endpoint at all."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_URL_IPV4_PART.fullmatch(p) for p in parts):
        return None
    values = [_ipv4_part(p) for p in parts]
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for i, v in enumerate(head):
        value += v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    return int(part)


def _looks_like_version(line: str, start: int, end: int) -> bool:
    """A dotted quad in a version context: ``version = "1.2.3.4"``, ``v1.2.3.4``, ``1.2.3.4-rc``."""
    return bool(
        _VERSION_BEFORE.search(line, max(0, start - 40), start) or _VERSION_AFTER.match(line, end)
    )


def _parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    if text.count(":") < 2:
        return None
    try:
        return ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return None


def _integer_ipv4(text: str, minimum: int = 1 << 24) -> ipaddress.IPv4Address | None:
    """``134744072`` or ``0x08080808`` as the IPv4 address it encodes, if it is one."""
    try:
        value = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        return None
    if text.isdigit() and len(text) > 1 and text.startswith("0"):
        return None
    if not minimum <= value <= 0xFFFFFFFF:
        return None
    return ipaddress.IPv4Address(value)


# --- string literals: joined, or spelled with escapes ---------------------------------

# One escape kind each: what follows the backslash. Octal needs two digits in the
# pre-filter: every character of an address or URL is 0o55 or above.
_HEX = r"x[0-9A-Fa-f]{2}"
_U4 = r"u[0-9A-Fa-f]{4}"
_U8 = r"U[0-9A-Fa-f]{8}"
_UBRACE = r"u\{[0-9A-Fa-f]{1,6}\}"
_OCTAL = r"[0-7]{1,3}"
_SLASH = r"/"
_NEEDLE_KIND = {_OCTAL: r"[0-7]{2}"}

#: Escapes each language's string literals undo (Java's ``\u`` works anywhere; C takes
#: more than two hex digits, but an address spelled so does not compile).
_ESCAPES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("c", "cpp", "objc", "python", "go"), (_HEX, _U4, _U8, _OCTAL)),
    **dict.fromkeys(("javascript", "typescript"), (_HEX, _U4, _UBRACE, _OCTAL, _SLASH)),
    "java": (_U4, _OCTAL),
    **dict.fromkeys(("kotlin", "groovy", "properties"), (_U4,)),
    "swift": (_UBRACE,),
    "dart": (_HEX, _U4, _UBRACE),
    "json": (_U4, _SLASH),
    "yaml": (_HEX, _U4, _U8, _SLASH),
    "toml": (_U4, _U8),
}
#: Languages whose compiler joins string literals written side by side, and the quotes
#: the pre-filter looks for (a C ``'x'`` is a character, not a string).
_ADJACENT: dict[str, str] = {"c": '"', "cpp": '"', "objc": '"', "python": "\"'", "dart": "\"'"}
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
# A prefix (@"", L"", u8"", r"", b"", f"") belongs to the literal only when glued to it.
_PREFIX = r"(?:@|u8|[LuUrRbBfF]{1,2})"
# Written unrolled (``"[^"\\]*(?:\\.[^"\\]*)*"``): ``re`` runs that several times faster than
# one alternation per character.
_QUOTED = "|".join(rf"{q}[^{q}\\\n]*(?:\\.[^{q}\\\n]*)*{q}" for q in "\"'`")
# The same, holding at least one escape.
_ESCAPED = "|".join(rf"{q}[^{q}\\\n]*(?:\\.[^{q}\\\n]*)+{q}" for q in "\"'`")
_TOKEN_ONE = re.compile(rf"(?:(?<![\w@])(?P<prefix>{_PREFIX}))?(?:{_QUOTED})")
# Where a run begins with a quote, the first literal's prefix is looked for behind it: a
# run pattern led by an optional prefix was tried at every letter of the line.
_PREFIX_BEFORE = re.compile(rf"(?<![\w@]){_PREFIX}$")


@dataclass(frozen=True)
class _LiteralRules:
    """How one language writes string literals: what joins them, which escapes they undo."""

    run: re.Pattern[str]
    escape: re.Pattern[str] | None
    templates: bool  # a backtick literal undoes escapes (JavaScript), or is raw (Go)


def _rules(language: str) -> _LiteralRules:
    kinds = _ESCAPES.get(language, ())
    escape = re.compile(r"\\(?:(?P<code>" + "|".join(kinds) + r")|[\s\S])") if kinds else None
    join = r"\s*(?:\+\s*)?" if language in _ADJACENT else r"\s*\+\s*"
    # a run of two literals or more, or one with an escape: a lone plain literal (most
    # of them) is no match, as the main pass has seen all of it
    run = rf"(?:{_QUOTED})(?:{join}{_PREFIX}?(?:{_QUOTED}))+" + (f"|{_ESCAPED}" if kinds else "")
    templates = language in ("javascript", "typescript")
    return _LiteralRules(re.compile(run), escape, templates)


_RULES = {language: _rules(language) for language in {*_ESCAPES, *_ADJACENT}}
_DEFAULT_RULES = _rules("")


def _escape_needle(language: str) -> str | None:
    """The pre-filter needle for an escape that may spell part of an endpoint in
    ``language``'s literals; it starts with a backslash, which most files lack."""
    kinds = _ESCAPES.get(language, ())
    if not kinds:
        return None
    return r"\\(?:" + "|".join(_NEEDLE_KIND.get(k, k) for k in kinds) + ")"


def _adjacent_needles(language: str) -> tuple[str, ...]:
    """Pre-filter needles for literals side by side, one per quote that joins. Each starts
    with a literal character, as the shared needles do. Side by side is a quote after
    text, blanks, then a quote followed by text (or by ``" "``): so ``""``, ``" ".join``,
    ``f("a", "b")`` and docstrings' quotes pass no needle, and stay off the detectors."""
    return tuple(
        quote + r"(?<=[^\s(=,{\"']" + quote + r")[ \t]*(?:@|u8|[LuUrRbBfF]{1,2})?"
        r"[\"'](?:[^\"'\s,;:)\]}]|[\"'][ \t])"
        for quote in _ADJACENT.get(language, "")
    )


#: Extra pre-filter needles per language, beside ``PREFILTER_NEEDLES``: for literals the
#: compiler joins side by side (``ADJACENT_NEEDLES``), and for escapes
#: (``ESCAPE_NEEDLES``), which a text without a backslash cannot hold.
ADJACENT_NEEDLES: dict[str, tuple[str, ...]] = {
    language: _adjacent_needles(language) for language in _ADJACENT
}
ESCAPE_NEEDLES: dict[str, str] = {
    language: needle for language in _ESCAPES if (needle := _escape_needle(language))
}


def _unescape(text: str, escape: re.Pattern[str]) -> str:
    """``text`` with the escapes its language undoes undone; an unknown escape keeps its
    backslash (``\\.`` in a regex stays, and ``\\\\x`` is a backslash, then ``x``)."""

    def one(m: re.Match[str]) -> str:
        code = m.group("code")
        if code is None:
            return _SIMPLE_ESCAPES.get(m.group()[1], m.group())
        if code == "/":
            return code
        value = int(code, 8) if code[0] in "01234567" else int(code[1:].strip("{}"), 16)
        return chr(value) if value <= 0x10FFFF else m.group()

    return escape.sub(one, text)


def _key(endpoint: Endpoint) -> IPAddress | str | None:
    return endpoint.address if endpoint.address is not None else endpoint.host


def _literal_endpoints(
    line: str, domains: re.Pattern[str] | None, rules: _LiteralRules, version_key: bool
) -> list[Endpoint]:
    """Endpoints that only appear once literals are joined (``"8.8" + ".8.8"``, or
    ``"8.8" ".8.8"`` where the compiler joins them) or their escapes are undone
    (``"77\\x2e88\\x2e8\\x2e8"``); each reported at the whole run of literals.

    What a literal shows as written is the main pass's. A joined match that overlaps an
    endpoint whole inside one literal is dropped: ``"2001:db8::1" + "77.88.8.8"`` names
    two addresses, not a third spliced one. The version context is the line's, before
    the run (``version = "1.2" ".3.4"``).
    """
    out: list[Endpoint] = []
    for m in rules.run.finditer(line):
        head = _PREFIX_BEFORE.search(line, max(0, m.start() - 2), m.start())
        first = head.start() if head else m.start()
        run = line[first : m.end()]
        tokens = list(_TOKEN_ONE.finditer(run))
        hidden: list[Endpoint] = []
        whole: list[tuple[int, int]] = []
        decoded: list[str] = []
        pos = 0
        for token in tokens:
            prefix = token.group("prefix") or ""
            written = token.group()[len(prefix) + 1 : -1]
            raw = "r" in prefix.lower() or (token.group()[-1] == "`" and not rules.templates)
            plain = written
            if rules.escape is not None and "\\" in written and not raw:
                plain = _unescape(written, rules.escape)
            shown: set[IPAddress | str | None] | None = None
            for inner in find_endpoints(plain, domains):
                whole.append((pos + inner.start, pos + inner.start + len(inner.text)))
                if plain != written:
                    if shown is None:
                        shown = {_key(e) for e in find_endpoints(written, domains)}
                    if _key(inner) not in shown:
                        hidden.append(replace(inner, how="hidden by escapes in a string literal"))
            decoded.append(plain)
            pos += len(plain)
        if len(tokens) > 1:
            for inner in find_endpoints("".join(decoded), domains):
                start, end = inner.start, inner.start + len(inner.text)
                if not any(start < e and s < end for s, e in whole):
                    hidden.append(replace(inner, how="assembled from split string literals"))
        for inner in hidden:
            if isinstance(inner.address, ipaddress.IPv4Address) and (
                version_key or _looks_like_version(line, first, m.end())
            ):
                continue
            out.append(replace(inner, start=first, text=run))
    return out
