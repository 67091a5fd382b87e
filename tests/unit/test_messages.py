"""Story actor requests and replies cross Ray packed with the standard pickler: nothing may be lost."""

import sys
import types

import pytest

from fleet_actors.actors.story_actor import StoryActor
from fleet_actors.adapters.memory.event_store import InMemoryEventStore
from fleet_actors.application.messages import CommandRequest, CommandResult, pack, unpack
from fleet_actors.domain.commands import AddDecision, ApplyChanges, CreateSubtask, RecordSummary, TransitionPhase
from fleet_actors.domain.events import Alternative
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import (
    ConcurrencyConflict,
    IncompatibleRelease,
    InvalidCommand,
    RuleViolation,
    StoryAlreadyExists,
    StoryError,
    StoryNotFound,
)
from fleet_actors.settings import Settings


def test_a_request_with_nested_commands_round_trips():
    request = CommandRequest(
        "story-1",
        ApplyChanges(
            (
                CreateSubtask("T1", "build it", "DEV", dependencies=("T0",), priority=2),
                AddDecision("use JetStream", "durable log", alternatives=(Alternative("Kafka", "heavier"),)),
                AddDecision("keep a log", "audit", metadata={"ticket": "42"}),
                TransitionPhase("BUILD"),
                RecordSummary("done"),
            )
        ),
        "cmd-1",
        "agent-7",
        expected_version=3,
    )
    assert unpack(pack(request)) == request


def test_a_history_of_slotted_events_round_trips_field_for_field():
    from datetime import UTC, datetime

    from fleet_actors.codec import decode_events, encode_event
    from fleet_actors.loadgen.histories import story_history

    history = story_history("story-1", 400, start=datetime(2026, 1, 1, tzinfo=UTC))
    for events in (history, decode_events([encode_event(e) for e in history])):  # built, and decoded
        copy = unpack(pack(events))
        assert copy == events
        assert [type(e.payload) for e in copy] == [type(e.payload) for e in events]
        assert all(not hasattr(e, "__dict__") for e in copy[:5])
    decision = next(e for e in history if e.event_type == "decision_added" and e.payload.alternatives)
    assert unpack(pack(decision)).payload.alternatives == decision.payload.alternatives


def test_an_event_pickled_by_an_earlier_release_is_refused_not_misread():
    """Events had a __dict__ before they were slotted: such a pickle brings that dict, which the
    generic __setstate__ would read as field values (event_id == "event_id", and so on)."""
    import copy
    import copyreg
    import io
    import pickle
    from datetime import UTC, datetime

    from fleet_actors.domain.events import EventEnvelope, SummaryRecorded

    envelope = EventEnvelope("e1", "story-1", 1, datetime(2026, 1, 1, tzinfo=UTC), SummaryRecorded("s"))
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)

    def as_before(value: object) -> tuple[object, ...]:  # what pickle made of an instance with a __dict__
        return copyreg.__newobj__, (type(value),), {f: getattr(value, f) for f in value.__slots__}  # type: ignore[attr-defined]

    pickler.dispatch_table = {EventEnvelope: as_before, SummaryRecorded: as_before}
    pickler.dump(envelope)
    with pytest.raises(IncompatibleRelease, match="another release"):
        unpack(buffer.getvalue())
    assert copy.deepcopy(envelope) == envelope  # the generic pickling of its field values still works
    assert pickle.loads(pickle.dumps(envelope)) == envelope


def test_results_and_states_round_trip():
    result = CommandResult("story-1", 4, ("e1", "e2"), "cmd-1", decision_id="D1", duplicate=True)
    assert unpack(pack(result)) == result
    assert unpack(pack(StoryState("story-1"))) == StoryState("story-1")


def rejected_change(error: StoryError, index: int) -> StoryError:
    error.change_index = index
    return error


@pytest.mark.parametrize(
    "error",
    [
        ConcurrencyConflict("changed", expected=3, actual=5),
        InvalidCommand("bad id", field="subtask_id"),
        RuleViolation("no cycles", field="dependencies"),
        rejected_change(RuleViolation("change 2: subtask 'T9' does not exist", field="subtask_id"), 2),
        StoryNotFound("story-1"),
        StoryAlreadyExists("story-1"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_typed_errors_keep_their_type_message_and_fields(error: StoryError):
    copy = unpack(pack(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def _message_of_another_release() -> bytes:
    """Bytes naming a class this code does not have, as a client or actor of another release would send."""
    module = types.ModuleType("fleet_actors_next_release")
    module.NewCommand = type("NewCommand", (), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        return pack(module.NewCommand())
    finally:
        del sys.modules[module.__name__]


def test_a_message_from_another_release_is_a_typed_error():
    with pytest.raises(IncompatibleRelease, match="different fleet-actors releases"):
        unpack(_message_of_another_release())


def test_the_story_actor_answers_a_request_it_cannot_read_with_a_typed_error():
    actor = StoryActor("S1", Settings(), store=InMemoryEventStore())
    reply = unpack(actor.execute(_message_of_another_release()))
    assert isinstance(reply, IncompatibleRelease) and reply.code == "FAILED_PRECONDITION"
