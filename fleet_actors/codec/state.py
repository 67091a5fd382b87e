"""StoryState <-> protobuf (StoryStateSnapshot): snapshots and the Valkey context document.

Nested values map field by field with the same names, like the event codec.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from fleet_actors.codec import wire
from fleet_actors.codec.collector import collector_paused
from fleet_actors.codec.events import set_timestamp
from fleet_actors.codec.filling import fill_statement, filled
from fleet_actors.codec.upcasting import upcast
from fleet_actors.domain.events import VALUE_TYPES
from fleet_actors.domain.results import CommandResult
from fleet_actors.domain.state import Decision, DecisionRelation, Impact, Milestone, PhaseChange, StoryState, Subtask
from fleet_actors.errors import EventDecodeError
from fleet_actors.proto import state_pb2

#: bump with an upcaster in codec/upcasters.py when the snapshot shape changes meaning
STATE_SCHEMA_VERSION = 2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the state's fields that are mappings of their values by id (the snapshot holds them as lists)
_KEYED_BY = {"subtasks": "subtask_id", "decisions": "decision_id"}
_NESTED = {
    "subtasks": (Subtask, state_pb2.SubtaskState),
    "decisions": (Decision, state_pb2.DecisionState),
    "relations": (DecisionRelation, state_pb2.DecisionRelationState),
    "impacts": (Impact, state_pb2.ImpactState),
    "milestones": (Milestone, state_pb2.MilestoneState),
    "phase_history": (PhaseChange, state_pb2.PhaseChangeState),
}


def state_to_proto(
    state: StoryState,
    last_sequence: int = 0,
    recent_commands: Iterable[CommandResult] = (),
    window_start_sequence: int = 0,
) -> state_pb2.StoryStateSnapshot:
    message = state_pb2.StoryStateSnapshot(
        schema_version=STATE_SCHEMA_VERSION, last_sequence=last_sequence, window_start_sequence=window_start_sequence
    )
    for field in dataclasses.fields(StoryState):
        value = getattr(state, field.name)
        if field.name in _NESTED:
            items = value.values() if isinstance(value, dict) else value
            target = getattr(message, field.name)
            for item in items:
                _fill(target.add(), item)
        else:
            _set(message, field.name, value)
    for result in recent_commands:
        _fill_command(message.recent_commands.add(), result)
    return message


def proto_to_state(message: state_pb2.StoryStateSnapshot) -> StoryState:
    values: dict[str, Any] = {}
    for field in dataclasses.fields(StoryState):
        if field.name in _NESTED:
            cls, message_type = _NESTED[field.name]
            descriptor = message_type.DESCRIPTOR  # type: ignore[attr-defined]
            items = list(map(_builder(cls, descriptor), getattr(message, field.name)))
            key = _KEYED_BY.get(field.name)
            values[field.name] = {getattr(i, key): i for i in items} if key else tuple(items)
        else:
            values[field.name] = _get(message, field.name)
    return StoryState(**values)


_COMMAND_FIELDS = ("story_id", "version", "event_ids", "command_id", "decision_id", "duplicate")
if tuple(f.name for f in dataclasses.fields(CommandResult)) != _COMMAND_FIELDS or hasattr(
    CommandResult, "__post_init__"
):  # recent_commands fills them directly: fail at import, not with a half-built result
    raise RuntimeError("CommandResult's fields changed: update codec/state.py recent_commands")


def recent_commands(message: state_pb2.StoryStateSnapshot) -> list[CommandResult]:
    """The carried command results of a parsed snapshot."""
    records = ((r.version, tuple(r.event_ids), r.command_id, r.decision_id) for r in message.recent_commands)
    return _command_results(message.story_id, records)


def _command_results(story_id: str, records: Iterable[tuple[int, tuple[str, ...], str, str]]) -> list[CommandResult]:
    """Carried command results from (version, event ids, command id, decision id), filled directly as
    their __init__ would (a snapshot carries up to a thousand, and the frozen dataclass's __init__
    was a sixth of its decode)."""
    new, set_dict = object.__new__, object.__setattr__
    out = []
    for version, event_ids, command_id, decision_id in records:
        result = new(CommandResult)
        set_dict(result, "__dict__", {
            "story_id": story_id, "version": version, "event_ids": event_ids,
            "command_id": command_id, "decision_id": decision_id or None, "duplicate": False,
        })  # fmt: skip
        out.append(result)
    return out


def encode_state(
    state: StoryState, last_sequence: int = 0, commands: Iterable[CommandResult] = (), window_start_sequence: int = 0
) -> bytes:
    data: bytes = state_to_proto(state, last_sequence, commands, window_start_sequence).SerializeToString()
    return data


class SnapshotEncoder:
    """Encodes the successive snapshots of a few stories, each nested value (subtask, decision,
    relation, carried command result...) encoded once and reused while the state still holds it.

    A story's state is immutable and an event replaces only the values it changes, so the values of
    one snapshot are, but for the last ``snapshot_every`` events' worth, those of the previous one:
    encoding every value again made the cost of a snapshot, paid on the command path every
    ``snapshot_every`` events, grow with the story (~25 ms at 10,000 events on the development
    machine). A protobuf message is the concatenation of its fields' records, so the snapshot is the
    scalar fields encoded as before, followed by each repeated field's records in order: the same
    message as
    :func:`encode_state` (byte for byte up to the order of the fields), decoded by the same code.
    """

    def __init__(self, stories: int = 8) -> None:
        self._stories = stories
        #: story id -> id(value) -> (the value, kept so that its id stays its own; its encoded record)
        self._records: OrderedDict[str, dict[int, tuple[object, bytes]]] = OrderedDict()

    def encode(
        self,
        state: StoryState,
        last_sequence: int = 0,
        commands: Iterable[CommandResult] = (),
        window_start_sequence: int = 0,
    ) -> bytes:
        known = self._records.pop(state.story_id, {})
        fresh: dict[int, tuple[object, bytes]] = {}
        head = state_pb2.StoryStateSnapshot(
            schema_version=STATE_SCHEMA_VERSION,
            last_sequence=last_sequence,
            window_start_sequence=window_start_sequence,
        )
        for name in _SCALAR_FIELDS:
            _set(head, name, getattr(state, name))
        parts = [head.SerializeToString()]
        for name, (_, message_type) in _NESTED.items():
            value = getattr(state, name)
            items = value.values() if isinstance(value, dict) else value
            parts.extend(_records(items, _field_tag(name), message_type, _fill, known, fresh))
        command_tag = _field_tag("recent_commands")
        parts.extend(_records(commands, command_tag, state_pb2.CommandRecord, _fill_command, known, fresh))
        self._records[state.story_id] = fresh
        while len(self._records) > self._stories:
            self._records.popitem(last=False)
        return b"".join(parts)


_SCALAR_FIELDS = tuple(f.name for f in dataclasses.fields(StoryState) if f.name not in _NESTED)


def _records(
    items: Iterable[Any],
    tag: bytes,
    message_type: Callable[[], Message],
    fill: Callable[[Message, Any], None],
    known: dict[int, tuple[object, bytes]],
    fresh: dict[int, tuple[object, bytes]],
) -> Iterator[bytes]:
    """Each item's record in a repeated message field (tag, length, message), from ``known`` when the
    item was encoded before; every record used goes into ``fresh``."""
    for item in items:
        entry = known.get(id(item))
        if entry is None or entry[0] is not item:
            message = message_type()
            fill(message, item)
            body = message.SerializeToString()
            entry = (item, tag + _varint(len(body)) + body)
        fresh[id(item)] = entry
        yield entry[1]


def _fill_command(target: Message, result: CommandResult) -> None:
    target.command_id = result.command_id
    target.version = result.version
    target.event_ids.extend(result.event_ids)
    target.decision_id = result.decision_id or ""


@functools.cache
def _field_tag(name: str) -> bytes:
    """The key of a length-delimited field of StoryStateSnapshot (field number, wire type 2)."""
    return _varint(state_pb2.StoryStateSnapshot.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_state(data: bytes) -> tuple[StoryState, int, list[CommandResult]]:
    return decode_snapshot(data)[:3]


def decode_snapshot(data: bytes) -> tuple[StoryState, int, list[CommandResult], int]:
    """A snapshot's state, last sequence, carried command results and idempotency window start."""
    with collector_paused():  # ~30,000 new objects for a 10,000-event story, none in a cycle
        return _decode_snapshot(data)


def _decode_snapshot(data: bytes) -> tuple[StoryState, int, list[CommandResult], int]:
    # A snapshot in the current shape: the compiled decoder (codec/wire.py); anything else (older
    # shapes, which are upcast, and bytes it does not expect) the protobuf runtime.
    if wire.decode is not None:
        fields = wire.decode(_SNAPSHOT_SHAPE, data)
        if fields is not None and fields["schema_version"] == STATE_SCHEMA_VERSION and fields["story_id"]:
            return _state_of(fields), fields["last_sequence"], _commands_of(fields), fields["window_start_sequence"]
    return decode_snapshot_with_protobuf(data)


def decode_snapshot_with_protobuf(data: bytes) -> tuple[StoryState, int, list[CommandResult], int]:
    """:func:`decode_snapshot` by the protobuf runtime alone (every snapshot it is given)."""
    message = state_pb2.StoryStateSnapshot()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise EventDecodeError(f"stored story state is corrupt: {error}") from None
    if (message.schema_version or 1) != STATE_SCHEMA_VERSION:
        message = _upcast_message(message)
    if not message.story_id:
        raise EventDecodeError("stored story state has no story id")
    return proto_to_state(message), message.last_sequence, recent_commands(message), message.window_start_sequence


def _state_of(fields: dict[str, Any]) -> StoryState:
    """The state from the compiled decoder's fields (as :func:`proto_to_state` builds it)."""
    values = {name: fields[name] for name in _STATE_FIELDS}
    for name, key in _KEYED_BY.items():
        values[name] = {getattr(value, key): value for value in values[name]}
    return filled(StoryState, values)


def _commands_of(fields: dict[str, Any]) -> list[CommandResult]:
    """:func:`recent_commands` from the compiled decoder's fields."""
    records = ((r["version"], r["event_ids"], r["command_id"], r["decision_id"]) for r in fields["recent_commands"])
    return _command_results(fields["story_id"], records)


def snapshot_position(data: bytes) -> tuple[str, int, int]:
    """A snapshot's story id, version and last sequence, without building its state (a history page
    needs only where to start reading). Raises EventDecodeError."""
    message = state_pb2.StoryStateSnapshot()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise EventDecodeError(f"stored story state is corrupt: {error}") from None
    if not message.story_id:
        raise EventDecodeError("stored story state has no story id")
    return message.story_id, message.version, message.last_sequence


def state_to_json(state: StoryState) -> dict[str, Any]:
    """The context document served from Valkey: the state as JSON (proto3 JSON mapping)."""
    document: dict[str, Any] = json_format.MessageToDict(state_to_proto(state), preserving_proto_field_name=True)
    return document


def state_from_json(document: dict[str, Any]) -> StoryState:
    """Raises EventDecodeError for a document this code cannot read (the caller rebuilds it)."""
    version = int(document.get("schema_version") or 1)
    document = upcast("story_state", version, STATE_SCHEMA_VERSION, document)
    message = state_pb2.StoryStateSnapshot()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise EventDecodeError(f"story state document is unreadable: {error}") from None
    return proto_to_state(message)


def _upcast_message(message: state_pb2.StoryStateSnapshot) -> state_pb2.StoryStateSnapshot:
    fields = json_format.MessageToDict(message, preserving_proto_field_name=True)
    fields = upcast("story_state", message.schema_version or 1, STATE_SCHEMA_VERSION, fields)
    upgraded = state_pb2.StoryStateSnapshot()
    json_format.ParseDict(fields, upgraded, ignore_unknown_fields=True)
    return upgraded


def _fill(target: Message, item: object) -> None:
    cls: type = type(item)  # as a plain `type` (Hashable for the cache), not type[object]
    for name, write in _writer_plan(cls):
        write(target, name, getattr(item, name))


@functools.cache
def _writer_plan(cls: type) -> tuple[tuple[str, Callable[[Message, str, Any], None]], ...]:
    """How to write each field of a value type, worked out once per type (the context document is
    encoded on every projected batch)."""
    plan = []
    for field in dataclasses.fields(cls):
        hint = str(field.type)
        if "datetime" in hint:
            plan.append((field.name, set_timestamp))
        elif hint in ("str", "int", "bool", "float"):
            plan.append((field.name, _set_scalar))
        else:
            plan.append((field.name, _set))
    return tuple(plan)


def _set_scalar(target: Message, name: str, value: Any) -> None:
    setattr(target, name, value)


@functools.cache
def _builder(cls: type, descriptor: Any) -> Callable[[Message], Any]:
    """How to build a value of ``cls`` from its message, worked out once per type: activation from a
    snapshot decodes thousands of nested values, and per-field reflection dominated it.

    The builder is written out as one function per type (as ``dataclasses`` writes ``__init__``):
    one dict display reading each field, timestamps, lists and maps inline, then the instance
    handed its fields at once. A generic loop over a field plan with a reader per field spent
    most of a 10,000-event snapshot's decode on calls. Callers of a repeated field look the
    builder up once for all its items.
    """
    scope: dict[str, Any] = {"cls": cls, "new": object.__new__}
    scope.update(EPOCH=_EPOCH, timedelta=timedelta, tuple=tuple, map=map)
    values = [
        (field.name, _read_expression(field.name, descriptor.fields_by_name[field.name], scope))
        for field in dataclasses.fields(cls)
    ]
    if hasattr(cls, "__post_init__"):
        body = "    return cls(" + ", ".join(f"{name}={expression}" for name, expression in values) + ")"
    else:
        # A frozen dataclass's __init__ sets each field through object.__setattr__; with no
        # __post_init__ to run after it, filling the instance directly is faster.
        body = f"    value = new(cls)\n    {fill_statement(cls, 'value', values, scope)}\n    return value"
    exec(f"def build(m):\n{body}\n", scope)  # field names from our own dataclasses and protos only
    build: Callable[[Message], Any] = scope["build"]
    return build


def _read_expression(name: str, field: Any, scope: dict[str, Any]) -> str:
    """The expression reading field ``name`` of message ``m`` as the domain value has it."""
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return f"(EPOCH + timedelta(0, (t := m.{name}).seconds, t.nanos // 1000)) if m.HasField({name!r}) else None"
        if field.message_type.GetOptions().map_entry:
            scope["as_dict"] = _as_dict
            return f"as_dict(m.{name})"
        if field.message_type.name in VALUE_TYPES:
            scope[f"build_{name}"] = _builder(VALUE_TYPES[field.message_type.name], field.message_type)
            return f"tuple(map(build_{name}, m.{name}))"
    if field.is_repeated:
        return f"tuple(m.{name})"
    return f"m.{name}"


def _as_dict(value: Any) -> dict[Any, Any]:
    return {key: value[key] for key in value} if value else {}  # dict(value) goes through the ABC


@functools.cache
def _reader(name: str, field: Any) -> Callable[[Message], Any]:
    """A reader of one field of a message (the snapshot's own fields)."""
    scope: dict[str, Any] = {"EPOCH": _EPOCH, "timedelta": timedelta}
    exec(f"def read(m):\n    return {_read_expression(name, field, scope)}\n", scope)
    read: Callable[[Message], Any] = scope["read"]
    return read


def _set(target: Message, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, datetime):
        set_timestamp(target, name, value)
    elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        items = getattr(target, name)
        for item in value:
            _fill(items.add(), item)
    elif isinstance(value, tuple):
        getattr(target, name).extend(value)
    elif isinstance(value, dict):
        getattr(target, name).update(value)
    else:
        setattr(target, name, value)


def _get(source: Message, name: str) -> Any:
    return _reader(name, source.DESCRIPTOR.fields_by_name[name])(source)


_STATE_FIELDS = tuple(field.name for field in dataclasses.fields(StoryState))
if hasattr(StoryState, "__post_init__"):  # _state_of fills it directly
    raise RuntimeError("StoryState has a __post_init__, which _state_of would skip")
_SNAPSHOT_SHAPE = wire.shape(
    None,
    state_pb2.StoryStateSnapshot.DESCRIPTOR,
    wire.ShapeRules(
        epoch=_EPOCH,
        missing_timestamp=None,
        classes={
            **VALUE_TYPES,
            **{message.DESCRIPTOR.name: cls for cls, message in _NESTED.values()},  # type: ignore[attr-defined]
            "CommandRecord": None,
        },
    ),
)
