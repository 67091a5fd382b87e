"""Schema evolution: golden v1 bytes (committed once, read forever), upcasters, newer versions refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet_actors.codec import decode_event
from fleet_actors.codec.state import decode_state, encode_state, state_from_json, state_to_json
from fleet_actors.codec.upcasters import upcast_subtask_updated_v1_v2, v1_status
from fleet_actors.codec.upcasting import UPCASTERS
from fleet_actors.domain.alternatives import alternatives_from, parse_alternatives
from fleet_actors.domain.events import Alternative
from fleet_actors.domain.state import PhaseChange, StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import EventDecodeError, InvalidCommand
from fleet_actors.loadgen.histories import story_history
from fleet_actors.proto import events_pb2, state_pb2

GOLDEN = Path(__file__).parent.parent / "fixtures" / "events_v1"


def golden_events():
    return [decode_event(path.read_bytes()) for path in sorted(GOLDEN.glob("*.bin"))]


def test_golden_v1_history_decodes_to_the_current_shape():
    events = golden_events()
    assert [e.version for e in events] == list(range(1, 13))
    assert {e.schema_version for e in events} == {1}  # as stored
    state = fold(StoryState("golden-v1"), events)
    assert state.subtasks["T1"].status == "DONE"  # "In Progress", then "done"
    assert state.subtasks["T2"].status == "IN_PROGRESS"  # "WIP", then the unmappable "waiting on QA"
    assert state.decisions["D1"].alternatives == (
        Alternative("Server-side sessions", "more state to replicate"),
        Alternative("Long-lived JWT", "revocation is hard"),
        Alternative("Opaque tokens"),
    )
    assert state.decisions["D2"].alternatives == ()
    assert (state.phase, state.version, state.milestones[0].kind) == ("BUILD", 12, "DESIGN_APPROVED")


def test_unmappable_v1_status_is_kept_visibly_not_guessed():
    event = golden_events()[9].payload
    assert event.status == "" and "waiting on QA" in event.note


@pytest.mark.parametrize(
    ("text", "status"),
    [("done", "DONE"), ("In Progress", "IN_PROGRESS"), (" wip ", "IN_PROGRESS"), ("to-do", "PENDING"),
     ("Won't fix", "CANCELLED"), ("on hold", "BLOCKED"), ("FINISHED", "DONE"), ("maybe later", ""), ("", "")],
)  # fmt: skip
def test_v1_status_words(text, status):
    assert v1_status(text) == status


def test_status_upcaster_keeps_the_existing_note():
    fields = upcast_subtask_updated_v1_v2({"subtask_id": "T1", "legacy_status": "huh?", "note": "from QA"})
    assert fields == {"subtask_id": "T1", "status": "", "note": "[unrecognised v1 status 'huh?'] from QA"}


def test_alternatives_from_text_and_values():
    assert parse_alternatives("A: cheaper;  * B because faster\n\n3. C \u2014 simpler") == (
        Alternative("A", "cheaper"),
        Alternative("B", "faster"),
        Alternative("C", "simpler"),
    )
    assert alternatives_from([("A", "x"), "B", Alternative("C")]) == (
        Alternative("A", "x"),
        Alternative("B"),
        Alternative("C"),
    )
    with pytest.raises(InvalidCommand):
        alternatives_from([42])


def test_every_versioned_event_type_has_its_upcaster_chain():
    from fleet_actors.codec import CURRENT_VERSIONS

    for event_type, current in CURRENT_VERSIONS.items():
        for version in range(1, current):
            assert any(k.event_type == event_type and k.from_version == version for k in UPCASTERS), event_type


def test_event_from_a_newer_writer_is_refused_with_a_clear_error():
    message = events_pb2.ContextEvent.FromString((GOLDEN / "07_subtask_updated.bin").read_bytes())
    message.schema_version = 3
    with pytest.raises(EventDecodeError, match="newer than this code"):
        decode_event(message.SerializeToString())


def test_state_schema_1_snapshot_and_document_are_upcast():
    state = fold(StoryState("golden-v1"), golden_events())
    v1 = state_pb2.StoryStateSnapshot.FromString(encode_state(state, 7))
    v1.schema_version = 1
    for decision in v1.decisions:
        text = "\n".join(f"{a.title}: {a.reason}" if a.reason else a.title for a in decision.alternatives)
        del decision.alternatives[:]
        decision.legacy_alternatives = text
    restored, sequence, _ = decode_state(v1.SerializeToString())
    assert restored == state and sequence == 7
    document = state_to_json(state)
    document["schema_version"] = 1
    for decision in document["decisions"]:
        decision["alternatives"] = "\n".join(
            f"{a['title']}: {a['reason']}" if a.get("reason") else a["title"] for a in decision.get("alternatives", [])
        )
    assert state_from_json(document) == state


def test_unreadable_document_is_an_error_the_caller_can_handle():
    with pytest.raises(EventDecodeError):
        state_from_json({"schema_version": 2, "decisions": [{"alternatives": "not a list"}]})


def test_timestamps_survive():
    assert golden_events()[0].timestamp == datetime(2025, 10, 10, 9, 1, tzinfo=UTC)


def test_a_rich_state_survives_its_snapshot_encoding():
    state = fold(StoryState("rich"), story_history("rich", 400, start=datetime(2026, 1, 1, tzinfo=UTC)))
    decision = next(iter(state.decisions.values()))
    state = replace(  # what the generator leaves out: metadata, an unset timestamp
        state,
        decisions={**state.decisions, decision.decision_id: replace(decision, metadata={"k": "v"})},
        phase_history=(*state.phase_history, PhaseChange("BUILD", "DESIGN", "why", None, "")),
    )
    assert any(d.alternatives for d in state.decisions.values()) and state.milestones and state.impacts
    restored, sequence, commands = decode_state(encode_state(state, 401))
    assert (restored, sequence, commands) == (state, 401, [])
    assert state_from_json(state_to_json(state)) == state
