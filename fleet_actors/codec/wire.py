"""The compiled decoder (``codec/_wire.c``) and the shapes that tell it what to build.

Every read decodes stored events and snapshots: a history, a temporal read, an activation, a
projection. The protobuf runtime parses a 10,000-event history in a few milliseconds, but building
the domain's dataclasses from the parsed messages, attribute by attribute in Python, took as long
as receiving the events did (docs/benchmarks.md, issue 25). The compiled decoder reads the wire
format and builds each value with its fields at once.

It covers the common path only: for anything else (an older schema that needs upcasting, a legacy
field, bytes it does not expect) it answers None and the caller decodes with the protobuf runtime,
which raises the errors. A shape is derived here from the generated descriptor and the domain
dataclass, so the two definitions stay the only ones; a field the shape cannot map is a failure at
import, not a silent difference.

Without a C compiler at install time the extension is not built (setup.py marks it optional):
:data:`COMPILED` is then False and every decode takes the protobuf runtime's path, slower.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

try:
    from fleet_actors.codec import _wire  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the protobuf runtime decodes everything
    _wire = None
    logging.getLogger(__name__).warning(
        "fleet_actors.codec._wire was not built (no C compiler at install): stored events and snapshots "
        "decode through the protobuf runtime, 4-6x slower; reinstall with gcc"
    )

COMPILED: bool = _wire is not None

#: How a shape fills one slot from each scalar field type: the name of the extension's kind (its
#: numbers are _wire.c's ``enum Kind``, exported under these names) and the value when absent.
_SCALARS = {
    FieldDescriptor.TYPE_STRING: ("STRING", ""),
    FieldDescriptor.TYPE_INT32: ("INT32", 0),
    FieldDescriptor.TYPE_INT64: ("INT64", 0),
    FieldDescriptor.TYPE_UINT32: ("UINT64", 0),
    FieldDescriptor.TYPE_UINT64: ("UINT64", 0),
    FieldDescriptor.TYPE_BOOL: ("BOOL", False),
}
_TIMESTAMP = "google.protobuf.Timestamp"


@dataclasses.dataclass(frozen=True)
class ShapeRules:
    """What the descriptors do not say about the domain values they decode into."""

    #: the Unix epoch as an aware datetime: decoded Timestamps are ``epoch + timedelta(...)``
    epoch: datetime
    #: an absent Timestamp: None (snapshots), or the epoch as the protobuf runtime reads it (events)
    missing_timestamp: datetime | None
    #: the class each repeated message type becomes (None: a dict of its fields by name)
    classes: Mapping[str, type | None]
    #: an enum's numbers -> the domain's names
    enum_names: Callable[[Any], Mapping[int, str]] = lambda enum: {}


def shape(
    cls: type | None,
    descriptor: Descriptor,
    rules: ShapeRules,
    *,
    renames: Mapping[str, str] | None = None,
    oneof: tuple[str, Mapping[str, Any]] | None = None,
    post_init_checked: bool = False,
    check: tuple[str, str, str] | None = None,
) -> Any:
    """The shape of ``descriptor``'s messages as ``cls`` instances (None: dicts by field name).

    ``renames``: message field -> dataclass field. ``oneof``: (its name, shape per member field):
    each member fills the slot of that name. ``post_init_checked``: the caller checks what the
    class's __post_init__ would have done (the compiled decoder does not run it). ``check``:
    (field, other field, attribute): decoded only where the first field's value equals that
    attribute of the other's value, else left to the protobuf runtime (an event stored in its
    payload type's current schema version).
    """
    if _wire is None:
        return None
    if rules.epoch.tzinfo is None or rules.epoch.timestamp() != 0:
        raise ValueError(f"ShapeRules.epoch must be the Unix epoch, aware: {rules.epoch!r}")
    renames = renames or {}
    if cls is not None and hasattr(cls, "__post_init__") and not post_init_checked:
        raise RuntimeError(f"{cls.__name__} has a __post_init__, which the compiled decoder would skip")
    if cls is not None and cls.__new__ is not object.__new__:  # type: ignore[comparison-overlap]
        raise RuntimeError(f"{cls.__name__} has a __new__ of its own, which the compiled decoder would skip")
    oneof_name, members = oneof if oneof is not None else ("", {})
    names = [renames.get(f.name, f.name) for f in descriptor.fields if f.name not in members]
    if oneof is not None:
        names.append(oneof_name)
    if cls is not None:
        wanted = [f.name for f in dataclasses.fields(cls)]
        if set(wanted) - set(names):
            raise RuntimeError(f"{cls.__name__}: no message field for {sorted(set(wanted) - set(names))}")
        names = wanted
    slots = {name: index for index, name in enumerate(names)}
    defaults: list[Any] = [None] * len(names)
    fresh = [False] * len(names)
    fields = []
    for field in descriptor.fields:
        if field.name in members:
            fields.append((field.number, slots[oneof_name], _wire.MESSAGE, members[field.name]))
            continue
        name = renames.get(field.name, field.name)
        if name not in slots:  # a legacy field: written by older code only, which upcasting reads
            fields.append((field.number, 0, _wire.FALLBACK, None))
            continue
        kind, default, extra = _kind(field, rules)
        if kind == "MAP" or default is _FRESH_DICT:
            fresh[slots[name]] = True
            default = None
        defaults[slots[name]] = default
        fields.append((field.number, slots[name], getattr(_wire, kind), extra))
    checked = None if check is None else (slots[check[0]], slots[check[1]], check[2])
    return _wire.Shape(cls, tuple(names), tuple(defaults), tuple(fresh), tuple(fields), checked)


def _kind(field: FieldDescriptor, rules: ShapeRules) -> tuple[str, Any, Any]:
    """(kind's name, value when absent, extra) of one field. A kind the decoder does not read is FALLBACK:
    a message that sets it goes to the protobuf runtime, and one that does not gets the value
    the protobuf path gives an absent field (MAP's absent value is a new dict: see shape())."""
    message = field.message_type
    if message is not None:
        if message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            if key.type == value.type == FieldDescriptor.TYPE_STRING:
                return "MAP", None, None
            return "FALLBACK", _FRESH_DICT, None
        if message.full_name == _TIMESTAMP and not field.is_repeated:
            return "TIMESTAMP", rules.missing_timestamp, rules.epoch
        if field.is_repeated:
            if message.name not in rules.classes:
                raise RuntimeError(f"{field.full_name}: no domain class for {message.name}")
            return "REPEATED_MESSAGE", (), shape(rules.classes[message.name], message, rules)
        raise RuntimeError(f"{field.full_name}: a message field with no domain value the decoder knows")
    if field.is_repeated:
        return ("REPEATED_STRING" if field.type == FieldDescriptor.TYPE_STRING else "FALLBACK"), (), None
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = dict(rules.enum_names(field.enum_type))
        return "ENUM", names.get(0, ""), names
    if field.type in _SCALARS:
        kind, default = _SCALARS[field.type]
        return kind, default, None
    return "FALLBACK", field.default_value, None  # floats, bytes, fixed and zigzag integers


_FRESH_DICT = object()  # an absent map: a new {} each time


#: ``decode(shape, data)``: the value ``data`` decodes to, or None when the protobuf runtime must
#: decode it (None itself without the extension).
decode: Callable[[Any, bytes], Any] | None = None if _wire is None else _wire.decode
#: ``decode_all(shape, list of data)``: ``(values, missing)``, each value as ``decode`` answers,
#: and how many are None.
decode_all: Callable[[Any, list[bytes]], tuple[list[Any], int]] | None = None if _wire is None else _wire.decode_all
