"""Filling frozen dataclasses without their __init__ (codec/filling.py), for both layouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fleet_actors.codec.filling import fill_statement, filled, is_slotted


@dataclass(frozen=True)
class WithDict:
    name: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Slotted:
    name: str
    tags: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


def test_the_layouts_are_told_apart():
    assert is_slotted(Slotted) and not is_slotted(WithDict)


@pytest.mark.parametrize("cls", [WithDict, Slotted])
def test_filled_equals_the_constructed_value(cls: type):
    fields = {"name": "n", "tags": ("a",)} | ({"extra": {"k": "v"}} if cls is Slotted else {})
    value = filled(cls, fields)
    assert value == cls(**fields) and type(value) is cls


@pytest.mark.parametrize("cls", [WithDict, Slotted])
def test_a_written_out_builder_fills_every_field(cls: type):
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    items = [("name", "m[0]"), ("tags", "tuple(m[1])")] + ([("extra", "{}")] if cls is Slotted else [])
    exec(f"def build(m):\n    v = new(cls)\n    {fill_statement(cls, 'v', items, scope)}\n    return v\n", scope)
    assert scope["build"](("n", ["a", "b"])) == cls("n", ("a", "b"))


def test_a_slotted_class_without_that_slot_is_refused():
    with pytest.raises(TypeError, match="not a slot"):
        fill_statement(Slotted, "v", [("missing", "1")], {})
