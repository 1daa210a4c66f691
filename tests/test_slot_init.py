"""`slot_init`: a frozen slotted dataclass's own behaviour, with a cheaper ``__init__``.

Each class here has a twin made by `dataclass(frozen=True, slots=True)` alone; the
tests hold the two to the same behaviour: parameters and defaults, immutability,
equality, hashing, repr, pickling, `dataclasses.replace`, and what mypy sees.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import typing
from collections.abc import Callable
from dataclasses import FrozenInstanceError, InitVar, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from shardvault.catalog.port import VersionRecord
from shardvault.config import load
from shardvault.demo import write_demo
from shardvault.model import ObjectRef
from shardvault.slot_init import slot_init
from shardvault.vault import Vault


def _point_class(name: str) -> type[Any]:
    @dataclass(frozen=True, slots=True)
    class Point:
        """A value with every kind of field `dataclass` offers but InitVar."""

        x: int
        label: str = "origin"
        tags: tuple[str, ...] = field(default_factory=tuple)
        seen: frozenset[str] = field(default_factory=frozenset, init=False)
        fixed: str = field(default="F", init=False)
        note: str = field(default="", kw_only=True, compare=False)

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x must not be negative")
            object.__setattr__(self, "label", self.label.strip())

    Point.__name__ = Point.__qualname__ = name  # where pickle finds it
    return Point


Plain = _point_class("Plain")
Fast = slot_init(_point_class("Fast"))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((2, " here "), {}), ((3, "a", ("t",)), {"note": "n"}), ((), {"x": 4})],
)
def test_the_same_fields_as_the_generated_init(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    fast, plain = Fast(*args, **kwargs), Plain(*args, **kwargs)
    assert repr(fast) == repr(plain).replace("Plain", "Fast")
    assert [getattr(fast, f.name) for f in dataclasses.fields(Fast)] == [
        getattr(plain, f.name) for f in dataclasses.fields(Plain)
    ]
    assert fast == Fast(*args, **kwargs)
    assert hash(fast) == hash(Fast(*args, **kwargs))


def test_the_same_signature() -> None:
    assert str(inspect.signature(Fast)) == str(inspect.signature(Plain))


def test_the_init_belongs_to_the_class_module() -> None:
    """As the generated one: its module, and annotations that resolve there."""
    assert VersionRecord.__init__.__module__ == "shardvault.catalog.port"
    hints = typing.get_type_hints(VersionRecord.__init__)
    assert hints["ref"] is ObjectRef and hints["return"] is type(None)


def test_bad_arguments_fail_as_before() -> None:
    for call in (lambda c: c(), lambda c: c(1, 2, 3, 4), lambda c: c(1, nope=2)):
        with pytest.raises(TypeError) as fast:
            call(Fast)
        with pytest.raises(TypeError) as plain:
            call(Plain)
        assert str(fast.value).startswith("Fast.__init__() ")  # as the generated one names it
        assert str(fast.value).split("__init__()")[1] == str(plain.value).split("__init__()")[1]


def test_post_init_still_checks() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Fast(-1)
    with pytest.raises(ValueError, match="must not be negative"):
        dataclasses.replace(Fast(1), x=-1)


def test_a_default_factory_is_called_for_each_value() -> None:
    @slot_init
    @dataclass(frozen=True, slots=True)
    class Bag:
        items: list[int] = field(default_factory=list)

    first, second = Bag(), Bag()
    first.items.append(1)
    assert second.items == []


def test_immutable() -> None:
    value = Fast(1)
    with pytest.raises(FrozenInstanceError):
        value.x = 2
    with pytest.raises(FrozenInstanceError):
        del value.x
    for cls in (Fast, Plain):  # no new attributes (3.11 raises TypeError: its own bug)
        with pytest.raises((AttributeError, TypeError)):
            cls(1).other = 1
    assert value.x == 1


def test_equality_and_hash() -> None:
    assert Fast(1, "a") == Fast(1, "a", note="ignored by compare")
    assert Fast(1, "a") != Fast(1, "b")
    assert Fast(1) != (1, "origin")  # not a tuple
    assert len({Fast(1), Fast(1), Fast(2)}) == 2
    assert hash(ObjectRef("t", "s", "k")) == hash(ObjectRef("t", "s", "k"))


def test_pickling_and_replace() -> None:
    value = Fast(5, "five", ("a",), note="n")
    copied = pickle.loads(pickle.dumps(value))
    assert copied == value and copied.note == "n" and copied.seen == frozenset()
    replaced = dataclasses.replace(value, label=" six ")
    assert replaced.label == "six" and replaced.x == 5
    ref = ObjectRef("t", "s", "k")
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_a_slot_of_a_base_class_is_set() -> None:
    @slot_init
    @dataclass(frozen=True, slots=True)
    class Base:
        a: int

    @slot_init
    @dataclass(frozen=True, slots=True)
    class Derived(Base):
        b: int = 2

    value = Derived(1)
    assert (value.a, value.b) == (1, 2)
    assert value == Derived(1, 2)


def test_refuses_what_it_cannot_serve() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

        def __post_init__(self, b: int) -> None:
            pass

    for cls, reason in (
        (Mutable, "not a frozen, slotted dataclass"),
        (NoSlots, "not a frozen, slotted dataclass"),
        (WithInitVar, "parameters would change"),
        (int, "not a frozen, slotted dataclass"),
    ):
        with pytest.raises(TypeError, match=reason):
            slot_init(cls)


def test_mypy_sees_the_dataclass(tmp_path: Path) -> None:
    """Typed as the dataclass it decorates: fields, parameters and frozenness."""
    source = tmp_path / "uses_slot_init.py"
    source.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from shardvault.slot_init import slot_init

            @slot_init
            @dataclass(frozen=True, slots=True)
            class Pair:
                a: int
                b: str = ""

            pair = Pair(1, b="x")
            reveal_type(pair.a)
            pair.a = 2
            Pair("one")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout
    assert re.search(r'Revealed type is "(builtins\.)?int"', out), out
    assert 'Property "a" defined in "Pair" is read-only' in out, out
    assert 'Argument 1 to "Pair" has incompatible type "str"; expected "int"' in out, out
    assert "Found 2 errors" in out, out


_GENERATED = ("__init__", "<string>")


class _FrozenInits:
    """Records the classes whose dataclass-generated frozen ``__init__`` runs, on any
    thread started after it is installed, while `watching`."""

    def __init__(self) -> None:
        self.built: list[str] = []
        self.on = False

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        # "<string>": where dataclasses compiles the methods it writes
        if self.on and event == "call" and (code.co_name, code.co_filename) == _GENERATED:
            params = getattr(type(frame.f_locals.get("self")), "__dataclass_params__", None)
            if params is not None and params.frozen:
                self.built.append(type(frame.f_locals["self"]).__qualname__)

    def watching(self, work: Callable[[], object]) -> list[str]:
        self.built.clear()
        self.on = True
        try:
            work()
        finally:
            self.on = False
        return list(self.built)


def test_a_small_get_and_put_build_every_value_by_slot_init(tmp_path: Path) -> None:
    """The rule the request path keeps: a value it builds, on any of its threads (the
    packs' writers too), uses `slot_init`."""
    watch = _FrozenInits()
    threading.setprofile(watch)  # the threads the vault starts (lazily) get it too
    sys.setprofile(watch)
    vault = Vault.open(load(write_demo(tmp_path)))  # packed nodes, as deployed
    try:
        vault.register_subject("intl", "alice", "US")
        warm, fresh = ObjectRef("intl", "alice", "warm"), ObjectRef("intl", "alice", "fresh")
        vault.put(warm, b"w" * 1024)
        vault.get(warm)
        vault.put(fresh, b"x" * 1024)
        assert watch.watching(lambda: vault.get(warm)) == []  # a re-read
        assert watch.watching(lambda: vault.get(fresh)) == []  # a first read
        assert watch.watching(lambda: vault.put(ObjectRef("intl", "alice", "new"), b"y")) == []
        assert watch.watching(_plain_point) == ["Plain"]  # the watch sees one
    finally:
        threading.setprofile(None)
        sys.setprofile(None)
        vault.close()


def _plain_point() -> object:
    return Plain(1)
