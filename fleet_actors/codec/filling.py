"""Filling a new instance of a frozen dataclass with its fields, as its ``__init__`` would, without
running ``__init__``: the protobuf-runtime decoders build thousands of values a read, and a frozen
dataclass's ``__init__`` sets each field through ``object.__setattr__``, one call at a time.

Two layouts: a class with a ``__dict__`` (the story state's types) is handed its fields as one
dict; a slotted class (the events, domain/events.py) has each field stored through its slot's
descriptor. Only for classes whose ``__init__`` does nothing else (no ``__post_init__`` to run, or
one whose work the caller does itself).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def is_slotted(cls: type) -> bool:
    """Whether instances of ``cls`` have no ``__dict__`` (every field in a slot)."""
    return cls.__dictoffset__ == 0


def fill_statement(cls: type, target: str, items: Iterable[tuple[str, str]], scope: dict[str, Any]) -> str:
    """Source of one statement that fills ``target`` (a new ``cls``) with (field, expression) pairs,
    for a function written out per type (as ``dataclasses`` writes ``__init__``); what it calls
    goes into ``scope``."""
    items = list(items)
    if not is_slotted(cls):
        scope["set_dict"] = object.__setattr__
        display = ", ".join(f"{name!r}: {expression}" for name, expression in items)
        return f"set_dict({target}, '__dict__', {{{display}}})"
    calls = []
    for name, expression in items:
        setter = f"set_{cls.__name__}_{name}"
        scope[setter] = _slot_setter(cls, name)
        calls.append(f"{setter}({target}, {expression})")
    return "; ".join(calls)


def filled(cls: type[T], fields: Mapping[str, object]) -> T:
    """A new ``cls`` with ``fields`` (every field of the class, by name)."""
    value: T = object.__new__(cls)
    if not is_slotted(cls):
        object.__setattr__(value, "__dict__", dict(fields))
        return value
    for name, field_value in fields.items():
        object.__setattr__(value, name, field_value)  # a slot's descriptor stores it
    return value


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    descriptor = getattr(cls, name, None)
    if not isinstance(descriptor, types.MemberDescriptorType):
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    setter: Callable[[Any, Any], None] = descriptor.__set__
    return setter
