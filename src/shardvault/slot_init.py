"""A frozen, slotted dataclass's ``__init__``, without what freezing costs it.

The ``__init__`` that `dataclasses` writes for a frozen class sets each field by
``object.__setattr__(self, name, value)``, about 2 k instructions a field, where a
class that is not frozen pays a few hundred; a get builds about seventy fields of
domain values. `slot_init` replaces that ``__init__`` with one that stores each
field through its slot's own descriptor (``member.__set__(self, value)``), which
is what ``object.__setattr__`` ends in after looking the name up.

Nothing else changes: the class is the one `dataclass(frozen=True, slots=True)`
made, with its ``__setattr__`` and ``__delattr__`` that raise, its equality, hash,
repr, pickling and `dataclasses.replace`, and mypy sees the dataclass as written.
The new ``__init__`` takes the same parameters with the same defaults, fills
``init=False`` fields and default factories as the generated one does, and calls
``__post_init__`` last. Use it above the dataclass decorator::

    @slot_init
    @dataclass(frozen=True, slots=True)
    class ObjectRef: ...

A class it cannot serve as promised (not a frozen slotted dataclass, or with an
``InitVar``) is refused with `TypeError` when the module defining it is imported.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from typing import Any, TypeVar

T = TypeVar("T")


class _Factory:
    """A factory field's default in the signature: "call the factory"."""

    def __repr__(self) -> str:
        return "<factory>"  # as the generated init's signature shows it


_NO_VALUE = _Factory()


def slot_init(cls: type[T]) -> type[T]:
    """CLS with an ``__init__`` that sets its slots directly; otherwise CLS unchanged."""
    fields = _fields(cls)
    scope: dict[str, Any] = {"__no_value": _NO_VALUE}
    params: list[str] = []
    keyword_only: list[str] = []
    body: list[str] = []
    for f in fields:
        scope[f"__set_{f.name}"] = _slot(cls, f.name).__set__
        value = _value(f, scope, body)
        if f.init:
            (keyword_only if f.kw_only else params).append(_param(f, scope))
        if value is not None:
            body.append(f"  __set_{f.name}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    signature = ", ".join(["self", *params, *(["*", *keyword_only] if keyword_only else [])])
    init = _compile(cls, signature, body or ["  pass"], scope)
    old = cls.__dict__["__init__"]
    if _parameters(init) != _parameters(old):  # an InitVar, or a field it cannot see
        raise TypeError(f"slot_init: {cls.__qualname__}'s parameters would change")
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = dict(old.__annotations__)
    init.__doc__ = old.__doc__
    type.__setattr__(cls, "__init__", init)
    return cls


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """CLS's fields, once it is checked to be what `slot_init` serves."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"slot_init: {cls.__qualname__} is not a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)
    if "self" in {f.name for f in fields}:
        raise TypeError(f"slot_init: {cls.__qualname__} has a field named self")
    return fields


def _parameters(function: Any) -> list[tuple[str, Any]]:
    """FUNCTION's parameters' names and kinds, in order."""
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


def _slot(cls: type, name: str) -> types.MemberDescriptorType:
    """The slot descriptor NAME's value lives in (on CLS or a base)."""
    for klass in cls.__mro__:
        found = klass.__dict__.get(name)
        if isinstance(found, types.MemberDescriptorType):
            return found
        if found is not None:
            break
    raise TypeError(f"slot_init: {cls.__qualname__}.{name} is not a slot")


def _value(f: dataclasses.Field[Any], scope: dict[str, Any], body: list[str]) -> str | None:
    """The expression field F is set to (None: left unset, as the generated init does)."""
    has_factory = f.default_factory is not dataclasses.MISSING
    if has_factory:
        scope[f"__factory_{f.name}"] = f.default_factory
    if f.init:
        if has_factory:
            body.append(f"  if {f.name} is __no_value: {f.name} = __factory_{f.name}()")
        return f.name
    if has_factory:
        return f"__factory_{f.name}()"
    if f.default is not dataclasses.MISSING:
        scope[f"__default_{f.name}"] = f.default
        return f"__default_{f.name}"
    return None


def _param(f: dataclasses.Field[Any], scope: dict[str, Any]) -> str:
    """Field F as a parameter, with its default as the generated init has it."""
    if f.default_factory is not dataclasses.MISSING:
        return f"{f.name}=__no_value"
    if f.default is not dataclasses.MISSING:
        scope[f"__default_{f.name}"] = f.default
        return f"{f.name}=__default_{f.name}"
    return f.name


def _compile(cls: type, signature: str, body: list[str], scope: dict[str, Any]) -> Any:
    """The ``__init__`` function, its helpers bound as closure cells (cheap to load)."""
    names = ", ".join(scope)
    lines = [f"def __make({names}):", f" def __init__({signature}):", *body, " return __init__"]
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {}
    module = sys.modules.get(cls.__module__)  # its globals: __module__, get_type_hints
    code = compile(source, f"<slot_init {cls.__qualname__}>", "exec")
    exec(code, module.__dict__ if module is not None else {}, namespace)
    return namespace["__make"](**scope)
