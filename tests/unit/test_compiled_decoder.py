"""The compiled decoder (codec/_wire.c) builds exactly what the protobuf runtime's path builds, or
leaves the bytes to it: for every event and snapshot shape, odd values, legacy shapes and damaged
bytes. And what it builds stays out of the cyclic collector's sight."""

from __future__ import annotations

import dataclasses
import gc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_actors.codec import CURRENT_VERSIONS, decode_event, decode_events, encode_event, events, state, wire
from fleet_actors.codec.events import decode_event_with_protobuf
from fleet_actors.codec.filling import is_slotted
from fleet_actors.codec.state import decode_snapshot, decode_snapshot_with_protobuf, encode_state
from fleet_actors.domain.events import (
    EVENT_TYPES,
    Alternative,
    ContextCreated,
    DecisionAdded,
    DecisionImpacted,
    DecisionRelated,
    DecisionStatusChanged,
    EventEnvelope,
    MilestoneRecorded,
    PhaseTransitioned,
    PlanVersioned,
    SubtaskCreated,
    SubtaskUpdated,
    SummaryRecorded,
)
from fleet_actors.domain.results import CommandResult
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import StateBuilder
from fleet_actors.errors import EventDecodeError
from fleet_actors.loadgen.histories import story_history
from fleet_actors.proto import events_pb2
from tests.unit.test_codec import SAMPLES

V1_EVENTS = sorted((Path(__file__).parents[1] / "fixtures" / "events_v1").glob("*.bin"))
AT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def test_the_compiled_decoder_is_built():
    # Without it every read decodes 4-6x slower (docs/benchmarks.md): an install on a machine
    # without a C compiler must not pass unnoticed here.
    assert wire.COMPILED, "fleet_actors.codec._wire was not built: pip install needs a C compiler (gcc)"


def _same(decoded: object, expected: object) -> None:
    assert decoded == expected
    assert type(decoded) is type(expected)
    if isinstance(decoded, EventEnvelope) and isinstance(expected, EventEnvelope):
        assert _typed_fields(decoded) == _typed_fields(expected)
        assert _typed_fields(decoded.payload) == _typed_fields(expected.payload)
        assert decoded.timestamp.tzinfo is expected.timestamp.tzinfo


def _typed_fields(value: object) -> list[tuple[str, type, object]]:
    """Each field with its value's type: equal dataclasses may still differ there (1 and True)."""
    return [(f.name, type(getattr(value, f.name)), getattr(value, f.name)) for f in dataclasses.fields(value)]  # type: ignore[arg-type]


def _compiled(data: bytes) -> EventEnvelope | None:
    envelope = wire.decode(events._ENVELOPE_SHAPE, data)  # type: ignore[misc]
    assert wire.decode_all(events._ENVELOPE_SHAPE, [data]) == ([envelope], envelope is None)  # type: ignore[misc]
    return envelope  # type: ignore[no-any-return]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.event_type)
@pytest.mark.parametrize(
    "at",
    [
        AT,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # negative seconds
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 29, 12, tzinfo=UTC),
    ],
    ids=["now", "pre-epoch", "min", "max", "leap-day"],
)
def test_every_event_type_decodes_as_the_protobuf_path_does(event, at):
    envelope = EventEnvelope("ev-1", "S-ü", 2**40, at, event, "cmd-1", "agent 7 ✓", redacted=("summary",))
    data = encode_event(envelope)
    assert _compiled(data) is not None  # the compiled path took it
    _same(decode_event(data), decode_event_with_protobuf(data))
    _same(decode_event(data), envelope)


def test_odd_values_decode_as_the_protobuf_path_does():
    message = events_pb2.ContextEvent(event_id="e", aggregate_id="S1", version=3, schema_version=2)
    message.subtask_updated.subtask_id = "T1"
    message.subtask_updated.status = 77  # a status number this code does not know: ""
    message.subtask_updated.properties["k"] = ""
    for data in (
        message.SerializeToString(),  # no timestamp: the epoch, as the protobuf runtime reads it
        events_pb2.ContextEvent(
            event_id="e", aggregate_id="S1", version=-5, schema_version=1,
            subtask_created=events_pb2.SubtaskCreated(subtask_id="T", priority=-3, estimated_hours=2**31 - 1),
        ).SerializeToString(),
    ):  # fmt: skip
        assert _compiled(data) is not None
        _same(decode_event(data), decode_event_with_protobuf(data))


texts = st.text(max_size=12)
maps = st.dictionaries(texts, texts, max_size=3)
int32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
payloads = st.one_of(
    st.builds(ContextCreated, texts, texts, texts),
    st.builds(PhaseTransitioned, texts, texts, texts),
    st.builds(SubtaskCreated, texts, texts, texts, texts, st.lists(texts, max_size=3).map(tuple), int32s, int32s, maps),
    st.builds(SubtaskUpdated, texts, st.sampled_from(["PENDING", "IN_PROGRESS", "BLOCKED", "DONE", ""]), texts, maps),
    st.builds(
        DecisionAdded,
        *(texts, texts, texts, texts),
        st.lists(st.builds(Alternative, texts, texts), max_size=3).map(tuple),
        *(texts, maps, maps),
    ),
    st.builds(DecisionRelated, texts, texts, texts),
    st.builds(DecisionImpacted, texts, texts),
    st.builds(MilestoneRecorded, texts, texts, texts, maps),
    st.builds(SummaryRecorded, texts),
    st.builds(DecisionStatusChanged, texts, texts, texts, maps),
    st.builds(PlanVersioned, texts, int32s, texts, texts, maps),
)
envelopes = st.builds(
    EventEnvelope,
    texts,
    texts,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    payloads,
    texts,
    texts,
    redacted=st.lists(texts, max_size=2).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(envelope=envelopes)
def test_any_event_decodes_as_the_protobuf_path_does(envelope):
    data = encode_event(envelope)
    _same(decode_event(data), decode_event_with_protobuf(data))
    _same(decode_event(data), envelope)


@settings(max_examples=500, deadline=None)
@given(envelope=envelopes, cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255))))
def test_damaged_bytes_are_left_to_the_protobuf_path_or_decoded_as_it_would(envelope, cut, flips):
    data = bytearray(encode_event(envelope))
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    damaged = bytes(data[: cut % (len(data) + 1)])
    compiled = _compiled(damaged)
    try:
        expected = decode_event_with_protobuf(damaged)
    except EventDecodeError:
        assert compiled is None  # the compiled path never answers what the protobuf path refuses
        with pytest.raises(EventDecodeError):
            decode_event(damaged)
        return
    except (OverflowError, ValueError):  # a timestamp out of datetime's range: as before
        assert compiled is None
        return
    if compiled is not None:
        _same(compiled, expected)
    _same(decode_event(damaged), expected)


@pytest.mark.parametrize("path", V1_EVENTS, ids=lambda p: p.stem)
def test_legacy_events_are_left_to_the_upcasters(path):
    data = path.read_bytes()
    message = events_pb2.ContextEvent.FromString(data)
    current = CURRENT_VERSIONS[message.WhichOneof("payload")]
    # an older shape goes to the upcasters; one still current (context_created v1) need not
    assert (_compiled(data) is None) == ((message.schema_version or 1) < current)
    _same(decode_event(data), decode_event_with_protobuf(data))


def test_without_the_extension_every_path_decodes_with_protobuf(monkeypatch):
    history = story_history("S1", 300, start=AT)
    data = [encode_event(envelope) for envelope in history]
    snapshot = encode_state(_state(history), 300)
    monkeypatch.setattr(events, "_compiled_decode", None)
    monkeypatch.setattr(events, "_compiled_decode_all", None)
    monkeypatch.setattr(wire, "decode", None)
    assert decode_events(data) == history
    assert decode_snapshot(snapshot)[0] == _state(history)


def _state(history: list[EventEnvelope]) -> StoryState:
    builder = StateBuilder(StoryState(history[0].story_id))
    for envelope in history:
        builder.add(envelope)
    return builder.state()


@pytest.mark.parametrize("size", [1, 40, 3000])
def test_snapshots_decode_as_the_protobuf_path_does(size):
    history = story_history(f"S{size}", size, start=datetime(1969, 12, 31, 23, 59, tzinfo=UTC))
    built = _state(history)
    commands = [
        CommandResult(built.story_id, i + 1, (f"e{i}", "é"), f"c{i}", f"D{i}" if i % 2 else None) for i in range(50)
    ]
    data = encode_state(built, 123, commands, 7)
    decoded = decode_snapshot(data)
    assert decoded == decode_snapshot_with_protobuf(data) == (built, 123, commands, 7)
    assert list(vars(decoded[0])) == list(vars(decode_snapshot_with_protobuf(data)[0]))
    assert wire.decode(state._SNAPSHOT_SHAPE, data) is not None  # type: ignore[misc]


def test_an_empty_state_decodes_as_the_protobuf_path_does():
    data = encode_state(StoryState("S-empty"))
    assert decode_snapshot(data) == decode_snapshot_with_protobuf(data) == (StoryState("S-empty"), 0, [], 0)


def test_events_are_slotted_and_the_decoder_fills_their_slots():
    # A slotted instance is one allocation, its fields stored at fixed places: decoding a history
    # took half the time it took with each field set by name (docs/benchmarks.md, slotted events).
    assert all(is_slotted(cls) for cls in (EventEnvelope, Alternative, *EVENT_TYPES.values()))
    assert events._ENVELOPE_SHAPE.slotted  # type: ignore[attr-defined]
    assert not state._SNAPSHOT_SHAPE.slotted  # type: ignore[attr-defined]  # its fields go into a dict


def test_decoded_values_stay_out_of_the_collectors_sight():
    history = story_history("S-gc", 500, start=AT)
    decoded = decode_events([encode_event(envelope) for envelope in history])
    assert decoded == history
    assert not any(gc.is_tracked(envelope) or gc.is_tracked(envelope.payload) for envelope in decoded)
    built = decode_snapshot(encode_state(_state(history)))[0]
    values = [*built.subtasks.values(), *built.decisions.values(), *built.milestones, *built.phase_history]
    assert values and not any(gc.is_tracked(value) for value in values)
    # the tuples of values the decoder made are untracked with them
    assert not gc.is_tracked(built.milestones) and not gc.is_tracked(built.phase_history)


def test_a_shape_is_refused_for_a_class_whose_post_init_it_would_skip():
    with pytest.raises(RuntimeError, match="__post_init__"):
        wire.shape(EventEnvelope, events_pb2.ContextEvent.DESCRIPTOR, events._WIRE_RULES)


def test_a_shape_is_refused_for_a_naive_or_shifted_epoch():
    rules = wire.ShapeRules(epoch=datetime(1970, 1, 1), missing_timestamp=None, classes={})
    with pytest.raises(ValueError, match="Unix epoch"):
        wire.shape(None, events_pb2.SummaryRecorded.DESCRIPTOR, rules)
    rules = wire.ShapeRules(epoch=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(1), missing_timestamp=None, classes={})
    with pytest.raises(ValueError, match="Unix epoch"):
        wire.shape(None, events_pb2.SummaryRecorded.DESCRIPTOR, rules)


def test_a_batch_mixing_legacy_and_current_events_decodes_each_as_it_would_alone():
    current = [encode_event(envelope) for envelope in story_history("S-mix", 30, start=AT)]
    legacy = [path.read_bytes() for path in V1_EVENTS]
    mixed = [data for pair in zip(current, legacy, strict=False) for data in pair] + current[len(legacy) :]
    decoded = decode_events(iter(mixed))  # any iterable, as the archive hands them over
    assert decoded == [decode_event_with_protobuf(data) for data in mixed]


SMALL_SNAPSHOT = encode_state(
    _state(story_history("S-damaged", 25, start=AT)),
    25,
    [CommandResult("S-damaged", 3, ("e1",), "c1", "D1")],
    2,
)


@settings(max_examples=400, deadline=None)
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=4))
def test_damaged_snapshots_are_left_to_the_protobuf_path_or_decoded_as_it_would(cut, flips):
    data = bytearray(SMALL_SNAPSHOT)
    for position, value in flips:
        data[position % len(data)] = value
    damaged = bytes(data[: cut % (len(data) + 1)])
    try:
        expected = decode_snapshot_with_protobuf(damaged)
    except (EventDecodeError, OverflowError, ValueError):
        with pytest.raises((EventDecodeError, OverflowError, ValueError)):
            decode_snapshot(damaged)
        return
    assert decode_snapshot(damaged) == expected


def _odd_message() -> tuple[object, type]:
    """A message with fields of kinds the decoder does not read (a future schema might add them)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="wire_odd.proto", package="wireodd", syntax="proto3")
    odd = file.message_type.add(name="Odd")
    entry = odd.nested_type.add(name="ScoresEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=proto.TYPE_STRING, label=proto.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=proto.TYPE_INT32, label=proto.LABEL_OPTIONAL)
    odd.field.add(name="title", number=1, type=proto.TYPE_STRING, label=proto.LABEL_OPTIONAL)
    odd.field.add(name="ratio", number=2, type=proto.TYPE_DOUBLE, label=proto.LABEL_OPTIONAL)
    odd.field.add(name="blob", number=3, type=proto.TYPE_BYTES, label=proto.LABEL_OPTIONAL)
    odd.field.add(name="counts", number=4, type=proto.TYPE_INT32, label=proto.LABEL_REPEATED)
    odd.field.add(
        name="scores", number=5, type=proto.TYPE_MESSAGE, label=proto.LABEL_REPEATED,
        type_name=".wireodd.Odd.ScoresEntry",
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName("wireodd.Odd")
    return descriptor, message_factory.GetMessageClass(descriptor)


def test_fields_of_kinds_it_does_not_read_send_their_messages_to_protobuf_and_read_as_absent_otherwise():
    descriptor, message = _odd_message()
    rules = wire.ShapeRules(epoch=datetime(1970, 1, 1, tzinfo=UTC), missing_timestamp=None, classes={})
    odd = wire.shape(None, descriptor, rules)  # type: ignore[arg-type]
    decode = wire.decode
    assert decode is not None
    # absent: what the protobuf runtime reads for them
    plain = decode(odd, message(title="t").SerializeToString())
    assert plain == {"title": "t", "ratio": 0.0, "blob": b"", "counts": (), "scores": {}}
    # set: the protobuf runtime's to decode
    for value in ({"ratio": 1.5}, {"blob": b"x"}, {"counts": [1]}, {"scores": {"a": 1}}):
        assert decode(odd, message(title="t", **value).SerializeToString()) is None


def test_the_health_check_warns_when_the_decoder_is_not_compiled(monkeypatch):
    import argparse

    from fleet_actors.cli import check_cmd

    args = argparse.Namespace(
        lag_events_warn=1000, lag_events_crit=10000, lag_seconds_warn=30.0, lag_seconds_crit=300.0,
        parked_warn=1, parked_crit=100, paused_crit=3600.0, no_projectors=True,
    )  # fmt: skip
    assert check_cmd.evaluate(args, [], "", {}).status == check_cmd.OK
    monkeypatch.setattr(check_cmd, "compiled_decoder", lambda: False)
    verdict = check_cmd.evaluate(args, [], "", {})
    assert verdict.status == check_cmd.WARNING
    assert "no compiled decoder" in verdict.line("")
