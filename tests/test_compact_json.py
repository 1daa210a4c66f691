"""`compact_json.one_shot`: the text of the encoder's own `encode`, made cheaper."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardvault.audit.entry import _CANONICAL, canonical_json
from shardvault.compact_json import one_shot
from shardvault.manifest import _ENCODER

ENCODERS = [
    _CANONICAL,
    _ENCODER,
    json.JSONEncoder(),
    json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")),
]
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _same(encoder: json.JSONEncoder, value: object) -> None:
    try:
        expected: object = encoder.encode(value)
    except (ValueError, TypeError) as exc:
        expected = (type(exc), str(exc))
    try:
        got: object = one_shot(encoder)(value)
    except (ValueError, TypeError) as exc:
        got = (type(exc), str(exc))
    assert got == expected


@given(VALUES)
def test_the_text_is_the_encoders_own(value: object) -> None:
    for encoder in ENCODERS:
        _same(encoder, value)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_what_the_encoder_refuses_it_refuses_alike(encoder: json.JSONEncoder) -> None:
    for value in ({"a": math.nan}, {"a": object()}, {1.5: 1}, {"é\ud800": [math.inf]}):
        _same(encoder, value)


def test_the_canonical_bytes_are_unchanged() -> None:
    doc = {"v": 1, "z": "ü", "a": {"y": True, "b": None, "n": -(2**53)}, "m": [1, "x"]}
    assert canonical_json(doc) == (
        b'{"a":{"b":null,"n":-9007199254740992,"y":true},"m":[1,"x"],"v":1,"z":"\xc3\xbc"}'
    )


def test_an_encoder_with_an_indent_is_used_as_it_is() -> None:
    encoder = json.JSONEncoder(indent=2)
    assert one_shot(encoder) == encoder.encode
