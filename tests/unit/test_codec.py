"""Events survive encode/decode exactly; bad bytes give typed errors, never crashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleet_actors.codec import decode_event, encode_event
from fleet_actors.codec.upcasting import upcast
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
from fleet_actors.errors import EventDecodeError
from fleet_actors.proto import events_pb2

SAMPLES = [
    ContextCreated("Login", "desc", "BUILD"),
    PhaseTransitioned("DESIGN", "BUILD", "ready"),
    SubtaskCreated("T2", "API", "d", "DEV", ("T1", "T0"), 1, 8),
    SubtaskUpdated("T2", "IN_PROGRESS", "started"),
    DecisionAdded(
        "D1",
        "ARCHITECTURE",
        "JWT",
        "stateless",
        (Alternative("sessions", "state to replicate"), Alternative("opaque")),
        "alice",
        {"adr": "12", "risk": "low"},
    ),
    DecisionRelated("D2", "D1", "SUPERSEDES"),
    DecisionImpacted("D1", "T2"),
    MilestoneRecorded("M1", "DEPLOYED", "to staging"),
    SummaryRecorded("so far so good"),
    SubtaskCreated("T3", "UI", role="DEV", properties={"plan_id": "P1", "type": "frontend"}),
    DecisionStatusChanged("D1", "RESOLVED", "agreed", {"data": '{"votes": 3}'}),
    PlanVersioned("P1", 2, "APPROVED", "second pass", {"owner": "po"}),
]
AT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def test_samples_cover_every_event_type():
    assert {type(e).event_type for e in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.event_type)
def test_round_trip(event):
    envelope = EventEnvelope("ev1", "S1", 7, AT, event, "cmd1", "agent-7")
    assert decode_event(encode_event(envelope)) == envelope


def test_envelope_fields_on_the_wire():
    message = events_pb2.ContextEvent.FromString(
        encode_event(EventEnvelope("ev1", "S1", 7, AT, SAMPLES[0], "cmd1", "agent-7"))
    )
    assert (message.event_id, message.aggregate_id, message.version, message.schema_version) == ("ev1", "S1", 7, 1)
    assert (message.command_id, message.actor, message.WhichOneof("payload")) == ("cmd1", "agent-7", "context_created")


@pytest.mark.parametrize(
    "at",
    [
        AT,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: negative seconds
        datetime(2030, 5, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 3, 4, 5, 6, 7),  # naive: UTC
    ],
    ids=["utc", "pre-epoch", "offset", "naive"],
)
def test_timestamp_on_the_wire_as_protobuf_writes_it(at):
    """encode_event sets the Timestamp by arithmetic: the bytes must stay those FromDatetime wrote."""
    message = events_pb2.ContextEvent.FromString(encode_event(EventEnvelope("ev1", "S1", 1, at, SAMPLES[0])))
    expected = events_pb2.ContextEvent()
    expected.timestamp.FromDatetime(at)
    assert message.timestamp == expected.timestamp


def test_enum_fields_map_by_value_name():
    message = events_pb2.ContextEvent.FromString(
        encode_event(EventEnvelope("ev1", "S1", 1, AT, SubtaskUpdated("T1", "IN_PROGRESS")))
    )
    assert message.subtask_updated.status == events_pb2.SUBTASK_STATUS_IN_PROGRESS
    assert message.schema_version == 2 and message.subtask_updated.legacy_status == ""


def test_garbage_bytes_raise_decode_error():
    with pytest.raises(EventDecodeError):
        decode_event(b"\xff\xff\xff\xff")


def test_unknown_payload_type_raises_decode_error():
    # Field 99 is what a newer writer might add to the oneof; this code must refuse it clearly.
    unknown = events_pb2.ContextEvent(event_id="e", aggregate_id="S1", version=1).SerializeToString()
    unknown += bytes([0x9A, 0x06, 0x00])  # tag 99, wire type 2, empty
    with pytest.raises(EventDecodeError, match="does not know"):
        decode_event(unknown)


def test_newer_schema_version_refused():
    message = events_pb2.ContextEvent.FromString(encode_event(EventEnvelope("ev1", "S1", 1, AT, SummaryRecorded("s"))))
    message.schema_version = 99
    with pytest.raises(EventDecodeError, match="newer"):
        decode_event(message.SerializeToString())


def test_missing_upcaster_is_an_error_not_a_silent_pass():
    with pytest.raises(EventDecodeError, match="no upcaster"):
        upcast("summary_recorded", 1, 2, {"summary": "s"})


def test_redacted_fields_survive_the_round_trip():
    envelope = EventEnvelope("ev1", "S1", 1, AT, SummaryRecorded("[REDACTED:password]"), redacted=("summary",))
    assert decode_event(encode_event(envelope)).redacted == ("summary",)
    assert decode_event(encode_event(EventEnvelope("ev2", "S1", 2, AT, SummaryRecorded("s")))).redacted == ()


def test_a_batch_decodes_as_each_event_does_and_leaves_the_collector_as_it_found_it():
    import gc

    from fleet_actors.codec import decode_events

    envelopes = [
        EventEnvelope(f"e{i}", "S1", i + 1, AT + timedelta(seconds=i), event) for i, event in enumerate(SAMPLES)
    ]
    payloads = [encode_event(envelope) for envelope in envelopes]
    assert decode_events(payloads) == [decode_event(data) for data in payloads] == envelopes
    assert gc.isenabled()
    gc.disable()
    try:
        decode_events(payloads)
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def test_the_collector_comes_back_on_after_a_failed_decode():
    import gc

    from fleet_actors.codec import decode_events

    with pytest.raises(EventDecodeError):
        decode_events([encode_event(EventEnvelope("e1", "S1", 1, AT, SAMPLES[0])), b"\xff\xff garbage"])
    assert gc.isenabled()
