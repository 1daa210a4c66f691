"""A JSON encoder's `encode`, without the set-up it repeats on every call.

`json.JSONEncoder.encode` builds a new C encoder, a circular-reference table and a
closure on every call: about 9 k instructions, a seventh of encoding a small
audit entry, which every get and put writes. `one_shot` builds the C encoder once
and returns a function giving the same text as ``encoder.encode``.

The one difference: no circular-reference table (a C encoder shared by threads
cannot share one). The documents encoded so (audit entries, manifests, signed
bodies) are trees their callers build or parse, which cannot hold a cycle; one
would end in `RecursionError` rather than `ValueError`.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any


def one_shot(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode``, with the C encoder made once (itself where there is none)."""
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None or encoder.indent is not None:
        return encoder.encode
    strings = (
        json.encoder.encode_basestring_ascii
        if encoder.ensure_ascii
        else json.encoder.encode_basestring
    )
    chunks = make(
        None, encoder.default, strings, None, encoder.key_separator, encoder.item_separator,
        encoder.sort_keys, encoder.skipkeys, encoder.allow_nan,
    )  # fmt: skip

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode
