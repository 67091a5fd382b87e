"""Given/when/then helpers for the pure story rules (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet_actors.domain.commands import Command
from fleet_actors.domain.events import Event, EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import Accepted, DecideContext, Rejected, decide, fold, ids_needed

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def given(*events: Event, story_id: str = "S1") -> StoryState:
    envelopes = [
        EventEnvelope(f"e{i}", story_id, i, T0 + timedelta(seconds=i), event, f"c{i}", "tester")
        for i, event in enumerate(events, start=1)
    ]
    return fold(StoryState(story_id), envelopes)


def when(state: StoryState, command: Command) -> tuple[Event, ...]:
    ids = tuple(f"id{i}" for i in range(ids_needed(command)))
    result = decide(state, command, DecideContext(ids))
    assert isinstance(result, Accepted), f"rejected: {result}"
    return result.events


def rejected(state: StoryState, command: Command) -> Exception:
    ids = tuple(f"id{i}" for i in range(ids_needed(command)))
    result = decide(state, command, DecideContext(ids))
    assert isinstance(result, Rejected), f"accepted: {result}"
    return result.error


def then_apply(state: StoryState, *events: Event) -> StoryState:
    envelopes = [
        EventEnvelope(f"x{i}", state.story_id, state.version + i, T0, event) for i, event in enumerate(events, start=1)
    ]
    return fold(state, envelopes)
