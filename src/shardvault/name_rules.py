"""A name's rule (a pattern the whole name must match), answered for a name it has
passed before by a set lookup.

A get checks about a dozen names: its tenant, jurisdiction, principal and purpose
at the public API, and again where a party checks what it is handed (the key
custodian, `KeyScope`). A full match costs about 2 k instructions, a lookup in a
set about 300 (callgrind), and the same text always gets the same answer, so a
name that passed once is kept and found again. Only a `str` itself is looked up:
a subclass's own equality could claim to be text it does not hold. The set is
emptied when full, so that names from the outside (a request id is new every
time) cannot grow it without bound; a name is then matched again.
"""

from __future__ import annotations

import re
from typing import TypeGuard

PASSED_LIMIT = 4096


class NameRule:
    """One pattern's check: ``(type(v) is str and v in rule.passed) or rule.matches(v)``,
    the lookup first and inline (a call costs about 600 instructions more)."""

    __slots__ = ("_pattern", "passed")

    def __init__(self, pattern: str) -> None:
        self._pattern = re.compile(pattern)
        self.passed: set[str] = set()  # only `matches` adds to it

    def matches(self, value: object) -> TypeGuard[str]:
        """Whether VALUE is a str the pattern matches whole; kept if it is (module doc)."""
        if not isinstance(value, str) or self._pattern.fullmatch(value) is None:
            return False
        if type(value) is str:
            if len(self.passed) >= PASSED_LIMIT:
                self.passed.clear()
            self.passed.add(value)
        return True
