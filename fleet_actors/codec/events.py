"""Mechanical mapping between the domain event dataclasses and the protobuf envelope."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError

from fleet_actors.codec.upcasting import upcast
from fleet_actors.domain.events import EVENT_TYPES, Event, EventEnvelope
from fleet_actors.errors import EventDecodeError
from fleet_actors.proto import events_pb2

_PAYLOAD_FIELDS = {f.name for f in events_pb2.ContextEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
CURRENT_VERSIONS: dict[str, int] = {name: cls.schema_version for name, cls in EVENT_TYPES.items()}

_missing = sorted(set(EVENT_TYPES) ^ _PAYLOAD_FIELDS)
if _missing:  # the two definitions must name the same events; fail at import, not at run time
    raise RuntimeError(f"domain events and events.proto disagree on: {_missing}")

_DATACLASS_FIELDS = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in EVENT_TYPES.items()}

_SCALAR, _REPEATED, _MAP = 0, 1, 2


def _field_plan(event_type: str) -> tuple[tuple[str, int], ...]:
    descriptor = events_pb2.ContextEvent.DESCRIPTOR.fields_by_name[event_type].message_type
    plan = []
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            plan.append((field.name, _MAP))
        elif field.is_repeated:
            plan.append((field.name, _REPEATED))
        else:
            plan.append((field.name, _SCALAR))
    return tuple(plan)


# Decoding is on every hot read path (activation, projection, replay): plan the fields once.
_FIELD_PLANS = {name: _field_plan(name) for name in EVENT_TYPES}
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
    )
    message.timestamp.FromDatetime(envelope.timestamp)
    payload = getattr(message, event.event_type)
    payload.SetInParent()
    for name in _DATACLASS_FIELDS[event.event_type]:
        value = getattr(event, name)
        target = getattr(payload, name)
        if isinstance(value, tuple):
            target.extend(value)
        elif isinstance(value, dict):
            target.update(value)
        else:
            setattr(payload, name, value)
    return message.SerializeToString()


def decode_event(data: bytes) -> EventEnvelope:
    """Parse, upcast to the current schema and build the domain event. Raises EventDecodeError."""
    message = events_pb2.ContextEvent()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise EventDecodeError(f"stored event is not a valid ContextEvent: {error}") from None
    event_type = event_type_of(message)
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise EventDecodeError(
            f"event {message.event_id or '?'} of story {message.aggregate_id or '?'} has a payload type "
            "this code does not know; upgrade fleet-actors"
        )
    fields = _payload_fields(getattr(message, event_type), _FIELD_PLANS[event_type])
    stored_version = message.schema_version or 1
    fields = upcast(event_type, stored_version, cls.schema_version, fields)
    names = _DATACLASS_FIELDS[event_type]
    if stored_version != cls.schema_version:
        fields = {k: v for k, v in fields.items() if k in names}
    event: Event = cls(**fields)
    stamp = message.timestamp
    return EventEnvelope(
        event_id=message.event_id,
        story_id=message.aggregate_id,
        version=message.version,
        timestamp=_EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000),
        payload=event,
        command_id=message.command_id,
        actor=message.actor,
        schema_version=stored_version,
    )


def _payload_fields(payload, plan: tuple[tuple[str, int], ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, kind in plan:
        value = getattr(payload, name)
        out[name] = value if kind == _SCALAR else tuple(value) if kind == _REPEATED else dict(value)
    return out
