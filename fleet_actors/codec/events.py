"""Mechanical mapping between the domain event dataclasses and the protobuf envelope."""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from fleet_actors.codec import wire
from fleet_actors.codec.collector import collector_paused
from fleet_actors.codec.filling import fill_statement, filled
from fleet_actors.codec.upcasting import upcast
from fleet_actors.domain.events import EVENT_TYPES, VALUE_TYPES, Event, EventEnvelope
from fleet_actors.errors import EventDecodeError
from fleet_actors.proto import events_pb2

if TYPE_CHECKING:
    from google.protobuf.descriptor import Descriptor, EnumDescriptor
    from google.protobuf.message import Message

_PAYLOAD_FIELDS = {f.name for f in events_pb2.ContextEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
CURRENT_VERSIONS: dict[str, int] = {name: cls.schema_version for name, cls in EVENT_TYPES.items()}

_missing = sorted(set(EVENT_TYPES) ^ _PAYLOAD_FIELDS)
if _missing:  # the two definitions must name the same events; fail at import, not at run time
    raise RuntimeError(f"domain events and events.proto disagree on: {_missing}")

_DATACLASS_FIELDS = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in EVENT_TYPES.items()}

_SCALAR, _REPEATED, _MAP, _ENUM, _MESSAGES = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class _Field:
    name: str
    kind: int
    #: enums: value number -> domain string and back; message lists: the domain value type
    names: dict[int, str] | None = None
    numbers: dict[str, int] | None = None
    value_type: type | None = None


def _enum_maps(enum: EnumDescriptor) -> tuple[dict[int, str], dict[str, int]]:
    """SUBTASK_STATUS_DONE <-> "DONE": the domain uses the value name without the enum's prefix."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    names = {v.number: v.name.removeprefix(prefix) for v in enum.values}
    names[0] = ""  # UNSPECIFIED
    return names, {name: number for number, name in names.items()}


def _field_plan(descriptor: Descriptor) -> tuple[_Field, ...]:
    plan = []
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            plan.append(_Field(field.name, _MAP))
        elif field.message_type is not None and field.is_repeated:
            plan.append(_Field(field.name, _MESSAGES, value_type=VALUE_TYPES[field.message_type.name]))
        elif field.is_repeated:
            plan.append(_Field(field.name, _REPEATED))
        elif field.enum_type is not None:
            names, numbers = _enum_maps(field.enum_type)
            plan.append(_Field(field.name, _ENUM, names, numbers))
        else:
            plan.append(_Field(field.name, _SCALAR))
    return tuple(plan)


# Decoding is on every hot read path (activation, projection, replay): plan the fields once.
_FIELD_PLANS = {
    name: _field_plan(events_pb2.ContextEvent.DESCRIPTOR.fields_by_name[name].message_type) for name in EVENT_TYPES
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_type_of(envelope: events_pb2.ContextEvent) -> str:
    return envelope.WhichOneof("payload") or ""


def encode_event(envelope: EventEnvelope) -> bytes:
    event = envelope.payload
    message = events_pb2.ContextEvent(
        event_id=envelope.event_id,
        aggregate_id=envelope.story_id,
        version=envelope.version,
        schema_version=envelope.schema_version,
        command_id=envelope.command_id,
        actor=envelope.actor,
        redacted=envelope.redacted,
    )
    set_timestamp(message, "timestamp", envelope.timestamp)
    payload = getattr(message, event.event_type)
    payload.SetInParent()
    fill_message(payload, event, _FIELD_PLANS[event.event_type])
    data: bytes = message.SerializeToString()
    return data


def set_timestamp(target: Message, name: str, value: datetime | None) -> None:
    """Set a Timestamp field from a datetime (naive means UTC, as ``Timestamp.FromDatetime`` has it),
    by arithmetic: FromDatetime goes through ``utctimetuple`` and ``calendar.timegm``, about ten times
    the work, and every appended event and snapshot pays it."""
    if value is None:
        return
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    stamp = getattr(target, name)
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def fill_message(target: Message, value_object: object, plan: tuple[_Field, ...]) -> None:
    """Copy a dataclass into a protobuf message field by field (same names)."""
    for field in plan:
        if not hasattr(value_object, field.name):
            continue  # a legacy field: read by upcasters, never written
        value = getattr(value_object, field.name)
        if field.kind == _SCALAR:
            setattr(target, field.name, value)
        elif field.kind == _ENUM:
            assert field.numbers is not None  # every _ENUM field carries its maps
            setattr(target, field.name, field.numbers[value])
        elif field.kind == _REPEATED:
            getattr(target, field.name).extend(value)
        elif field.kind == _MAP:
            getattr(target, field.name).update(value)
        else:
            assert field.value_type is not None  # every _MESSAGES field carries its value type
            items = getattr(target, field.name)
            for item in value:
                fill_message(items.add(), item, _value_plan(field.value_type))


def decode_events(payloads: Iterable[bytes]) -> list[EventEnvelope]:
    """:func:`decode_event` of each, with the cyclic collector paused (codec/collector.py): a batch
    of a story's events is thousands of new objects, none in a cycle."""
    with collector_paused():
        if _compiled_decode_all is None:
            return list(map(decode_event_with_protobuf, payloads))
        data = payloads if isinstance(payloads, list) else list(payloads)
        envelopes, missing = _compiled_decode_all(_ENVELOPE_SHAPE, data)
        if missing:
            pairs = zip(envelopes, data, strict=True)
            envelopes = [envelope or decode_event_with_protobuf(payload) for envelope, payload in pairs]
        return envelopes


def decode_event(data: bytes) -> EventEnvelope:
    """Parse, upcast to the current schema and build the domain event. Raises EventDecodeError.

    An event stored in its type's current shape is decoded by the compiled decoder (codec/wire.py);
    anything else (older shapes, which the upcasters read, and bytes it does not expect) by the
    protobuf runtime, which raises the errors."""
    if _compiled_decode is not None:
        envelope = _compiled_decode(_ENVELOPE_SHAPE, data)
        if envelope is not None:
            return envelope  # type: ignore[no-any-return]
    return decode_event_with_protobuf(data)


def decode_event_with_protobuf(data: bytes) -> EventEnvelope:
    """:func:`decode_event` by the protobuf runtime alone (every event it is given)."""
    message = events_pb2.ContextEvent()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise EventDecodeError(f"stored event is not a valid ContextEvent: {error}") from None
    event_type = message.WhichOneof("payload") or ""
    decoder = _DECODERS.get(event_type)
    if decoder is None:
        raise EventDecodeError(
            f"event {message.event_id or '?'} of story {message.aggregate_id or '?'} has a payload type "
            "this code does not know; upgrade fleet-actors"
        )
    cls = decoder.cls
    stored_version = message.schema_version or 1
    if stored_version == cls.schema_version:
        return decoder.build(message, getattr(message, event_type), stored_version)
    # The upcasters may need the legacy fields, which then stay behind.
    fields = upcast(event_type, stored_version, cls.schema_version, decoder.read_all(getattr(message, event_type)))
    fields = {k: v for k, v in fields.items() if k in decoder.names}
    stamp = message.timestamp
    # Filled directly, as their __init__ would (see _builder). The envelope's __post_init__ only
    # defaults schema_version, which is given here.
    return filled(EventEnvelope, {
        "event_id": message.event_id, "story_id": message.aggregate_id, "version": message.version,
        "timestamp": _EPOCH + timedelta(0, stamp.seconds, stamp.nanos // 1000), "payload": filled(cls, fields),
        "command_id": message.command_id, "actor": message.actor, "schema_version": stored_version,
        "redacted": tuple(message.redacted),
    })  # fmt: skip


@dataclass(frozen=True)
class _Decoder:
    """How to read one event type's payload into its dataclass fields, worked out once."""

    cls: type[Event]
    #: the dataclass's field names (a stored payload may carry legacy ones besides)
    names: frozenset[str]
    #: every field of the message, legacy ones included (for the upcasters)
    read_all: Callable[[Any], dict[str, object]]
    #: the envelope of a payload in the current shape: (message, payload, schema version) -> envelope
    build: Callable[[Any, Any, int], EventEnvelope]


def _decoder(cls: type[Event], plan: tuple[_Field, ...]) -> _Decoder:
    if hasattr(cls, "__post_init__"):  # filled directly by decode_event: none may need one
        raise RuntimeError(f"{cls.__name__} has a __post_init__, which decode_event would skip")
    names = frozenset(_DATACLASS_FIELDS[cls.event_type])
    current = tuple(f for f in plan if f.name in names)
    return _Decoder(cls, names, _reader(plan), _builder(cls, current))


def _builder(cls: type[Event], plan: tuple[_Field, ...]) -> Callable[[Any, Any, int], EventEnvelope]:
    """The envelope and event of a payload in the current shape, written out as one function per
    event type (as ``dataclasses`` writes ``__init__``): two dict displays reading each field, then
    both instances handed their fields at once, as their __init__ would fill them (decoding is on
    every read path: a history of 10,000 events spent more time in the frozen dataclasses'
    field-by-field __init__ and in a generic per-field loop than in parsing). The envelope's
    __post_init__ only defaults schema_version, which is given here."""
    scope: dict[str, Any] = {
        "cls": cls, "Envelope": EventEnvelope, "new": object.__new__,
        "EPOCH": _EPOCH, "timedelta": timedelta, "tuple": tuple, "as_dict": _as_dict,
    }  # fmt: skip
    values = []
    for i, field in enumerate(plan):
        read = f"p.{field.name}"
        if field.kind == _ENUM:
            scope[f"names{i}"] = field.names
            read = f"names{i}.get(p.{field.name}, '')"
        elif field.kind == _REPEATED:
            read = f"tuple(p.{field.name})"
        elif field.kind == _MAP:
            read = f"as_dict(p.{field.name})"
        elif field.kind == _MESSAGES:
            scope[f"nested{i}"] = _special_reader(field)
            read = f"nested{i}(p)"
        values.append((field.name, read))
    envelope = {
        "event_id": "m.event_id", "story_id": "m.aggregate_id", "version": "m.version",
        "timestamp": "EPOCH + timedelta(0, stamp.seconds, stamp.nanos // 1000)", "payload": "event",
        "command_id": "m.command_id", "actor": "m.actor", "schema_version": "schema_version",
        "redacted": "tuple(m.redacted)",
    }  # fmt: skip
    source = f"""def build(m, p, schema_version):
    event = new(cls)
    {fill_statement(cls, "event", values, scope)}
    envelope = new(Envelope)
    stamp = m.timestamp
    {fill_statement(EventEnvelope, "envelope", envelope.items(), scope)}
    return envelope
"""
    exec(source, scope)  # names from our own dataclasses and protos only
    build: Callable[[Any, Any, int], EventEnvelope] = scope["build"]
    return build


def _as_dict(value: Any) -> dict[Any, Any]:
    return {key: value[key] for key in value} if value else {}  # dict(value) goes through the ABC


def _reader(plan: tuple[_Field, ...]) -> Callable[[Any], dict[str, object]]:
    plain = tuple(f.name for f in plan if f.kind == _SCALAR)
    special = tuple((f.name, _special_reader(f)) for f in plan if f.kind != _SCALAR)
    getter = operator.attrgetter(*plain) if plain else None

    def read(payload: Any) -> dict[str, object]:
        if getter is None:
            out: dict[str, object] = {}
        elif len(plain) == 1:
            out = {plain[0]: getter(payload)}
        else:
            out = dict(zip(plain, getter(payload), strict=True))
        for name, reader in special:
            out[name] = reader(payload)
        return out

    return read


def _special_reader(field: _Field) -> Callable[[Any], object]:
    name = field.name
    if field.kind == _ENUM:
        assert field.names is not None  # every _ENUM field carries its maps
        names = field.names
        return lambda payload: names.get(getattr(payload, name), "")
    if field.kind == _REPEATED:
        return lambda payload: tuple(getattr(payload, name))
    if field.kind == _MAP:
        return lambda payload: _as_dict(getattr(payload, name))
    value_type = field.value_type
    assert value_type is not None  # every _MESSAGES field carries its value type
    nested = _value_plan(value_type)
    return lambda payload: tuple(value_type(**_payload_fields(item, nested)) for item in getattr(payload, name))


def _payload_fields(payload: Any, plan: tuple[_Field, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for field in plan:
        value = getattr(payload, field.name)
        if field.kind == _SCALAR:
            out[field.name] = value
        elif field.kind == _ENUM:
            assert field.names is not None  # every _ENUM field carries its maps
            out[field.name] = field.names.get(value, "")
        elif field.kind == _REPEATED:
            out[field.name] = tuple(value)
        elif field.kind == _MAP:
            out[field.name] = dict(value)
        else:
            assert field.value_type is not None  # every _MESSAGES field carries its value type
            nested = _value_plan(field.value_type)
            out[field.name] = tuple(field.value_type(**_payload_fields(item, nested)) for item in value)
    return out


@functools.cache
def _value_plan(value_type: type) -> tuple[_Field, ...]:
    return _field_plan(getattr(events_pb2, value_type.__name__).DESCRIPTOR)


_DECODERS = {name: _decoder(cls, _FIELD_PLANS[name]) for name, cls in EVENT_TYPES.items()}


def _enum_names(enum: EnumDescriptor) -> dict[int, str]:
    return _enum_maps(enum)[0]


_WIRE_RULES = wire.ShapeRules(epoch=_EPOCH, missing_timestamp=_EPOCH, classes=VALUE_TYPES, enum_names=_enum_names)
_ENVELOPE_SHAPE = wire.shape(
    EventEnvelope,
    events_pb2.ContextEvent.DESCRIPTOR,
    _WIRE_RULES,
    renames={"aggregate_id": "story_id"},
    oneof=(
        "payload",
        {
            name: wire.shape(cls, events_pb2.ContextEvent.DESCRIPTOR.fields_by_name[name].message_type, _WIRE_RULES)
            for name, cls in EVENT_TYPES.items()
        },
    ),
    # Only events stored in their payload type's current shape (the rest are upcast), whose
    # schema_version is then the one EventEnvelope's __post_init__ would default it to.
    check=("schema_version", "payload", "schema_version"),
    post_init_checked=True,
)
_compiled_decode = wire.decode
_compiled_decode_all = wire.decode_all
