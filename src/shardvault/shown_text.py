"""A value as a message or an output shows it: cut when overlong, escaped where unprintable.

What a caller gave (an id, a key, a file name) is repeated in errors and output,
so a message stays one line of bounded length, tells look-alikes apart, and
writes a byte that is not UTF-8 as ``\\xNN`` everywhere (a consumer reading UTF-8
gets no U+FFFD and no crash). The domain values' checks (`model`) name what they
refuse with `shown`.
"""

from __future__ import annotations

import re


def shown(value: object, limit: int = 80, *, escaped: bool = False) -> str:
    """``repr(value)``, cut to ``limit`` characters: an overlong id is named, not echoed.
    ``escaped``: as ``ascii(value)``, where a look-alike must be told apart. A string's
    undecodable byte is written ``\\xNN``, as output writes it (`undecodable_escaped`),
    and so is one of a string in a list, tuple, set or dict (a list of file names)."""
    text = ascii(value) if escaped else repr(value)
    if _text_only(value):
        text = repr_escaped(text)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    return f"{text[: limit - 1]}… ({size})"


# In a str's repr: an escaped backslash (kept, so that what follows it is text), a
# character U+0080-U+00FF, or an undecodable byte (a lone surrogate U+DC80-U+DCFF).
_REPR_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f]|udc[89a-f][0-9a-f])")


def repr_escaped(text: str) -> str:
    """TEXT holding a string's repr (a message of a library's: ``'x\\udcff'``) with its
    escapes as `shown` writes them, so a byte reads the same in every message."""
    return _REPR_ESCAPE.sub(_byte_escape, text)


def _text_only(value: object) -> bool:
    """Whether VALUE's repr has a backslash only within the repr of a string: a string,
    a number, None, or a list, tuple, set or dict of those (not bytes, whose repr's
    ``\\xNN`` is a byte already)."""
    if value is None or isinstance(value, str | int | float):
        return True
    if isinstance(value, dict):
        return all(_text_only(key) and _text_only(item) for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return all(_text_only(item) for item in value)
    return False


def _byte_escape(match: re.Match[str]) -> str:
    """A repr's ``\\udcNN`` (the byte NN, not UTF-8) as ``\\xNN``, as ``$'...'`` in a
    shell writes the byte; the character U+00NN, which repr writes ``\\xNN`` too,
    then as ``\\u00NN``, so the two stay apart."""
    escape = match[1]
    if escape.startswith("x"):
        return f"\\u00{escape[1:]}"
    if escape.startswith("u"):
        return f"\\x{escape[3:]}"
    return match[0]


def named(text: str, limit: int = 200) -> str:
    """A name or path as given, unless it is too long or unprintable to repeat as it is."""
    return text if len(text) <= limit and text.isprintable() else shown(text, limit)


_SURROGATE = re.compile("[\ud800-\udfff]")


def undecodable_escaped(text: str) -> str:
    """TEXT with what UTF-8 cannot hold escaped, for output a consumer reads as UTF-8.

    A byte of a file name or an argument that is not UTF-8 reaches Python as a lone
    surrogate (U+DC80 to U+DCFF); written out it was either that byte (no longer
    UTF-8: jq reads U+FFFD) or a crash. It is written ``\\xNN``, as ``$'...'`` in a
    shell writes the byte, and any other lone surrogate ``\\uXXXX``."""
    return _SURROGATE.sub(_escape_surrogate, text)


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def one_line(message: str) -> str:
    """MESSAGE with what is not printable escaped (a newline as \\n, U+202E as \\u202e):
    a path or name echoed as given split an error or a note in two lines, or reversed
    its end.
    An undecodable byte is written \\xNN, as output and `model.shown` write it, and so
    a character U+0080 to U+00FF is \\u00NN, not \\xNN."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else _unprintable_escaped(c) for c in message)


def _unprintable_escaped(char: str) -> str:
    """CHAR, not printable, as an escape that names it alone."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # the byte NN of an argument or a file name, not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if 0x80 <= code <= 0xFF:
        return f"\\u{code:04x}"
    return ascii(char)[1:-1]


def undecodable_escaped_in(value: object) -> object:
    """VALUE (str, list, dict, nested) with every string `undecodable_escaped`: a JSON
    document must be escaped string by string, not once written (a ``\\x`` in it
    would not be JSON)."""
    if isinstance(value, str):
        return undecodable_escaped(value)
    if isinstance(value, dict):
        return {undecodable_escaped_in(k): undecodable_escaped_in(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [undecodable_escaped_in(item) for item in value]
    return value


__all__ = [
    "named",
    "one_line",
    "repr_escaped",
    "shown",
    "undecodable_escaped",
    "undecodable_escaped_in",
]
