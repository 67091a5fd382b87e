"""The projector's exactly-once and gap rules on the in-memory ports: redeliveries change nothing, a
read model behind the events at hand is caught up from the log, in order (milliseconds, no servers)."""

from __future__ import annotations

from fleet_actors.adapters.memory import (
    InMemoryDeadLetterIndex,
    InMemoryDocuments,
    InMemoryEventStore,
    InMemoryGraph,
    InMemoryProjectionControl,
)
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.ports.read_models import ParkedEvent
from fleet_actors.projections.dead_letters import DeadLetters
from fleet_actors.projections.projector import Projector
from fleet_actors.settings import Settings
from tests.contracts.read_models_contract import new_story_id, story_events


class ParkedInMemory:
    def __init__(self) -> None:
        self.stored: list[tuple[ParkedEvent, bytes]] = []

    async def ensure_stream(self) -> None:
        pass

    async def store(self, event: ParkedEvent, data: bytes) -> int:
        self.stored.append((event, data))
        return len(self.stored)


def projector(store: InMemoryEventStore) -> Projector:
    return Projector(
        Settings(), 0, 1, feeds=None, store=store, graph=InMemoryGraph(), documents=InMemoryDocuments(),  # type: ignore[arg-type]
        control=InMemoryProjectionControl(), dead_letters=DeadLetters(ParkedInMemory(), InMemoryDeadLetterIndex()),
    )  # fmt: skip


async def logged(store: InMemoryEventStore, story_id: str, count: int):
    events = story_events(story_id, count)
    await store.append(story_id, 0, events)
    return events


async def test_a_redelivered_batch_changes_nothing():
    store = InMemoryEventStore()
    story_id = new_story_id()
    events = await logged(store, story_id, 4)
    p = projector(store)
    assert await p._project({story_id: events}) == {}
    assert await p._project({story_id: events[1:] + events[:2]}) == {}  # again, and out of order
    assert p.stats.applied == 4 and p.stats.skipped_duplicates == 4
    assert await p._graph.applied_versions([story_id]) == {story_id: 4}
    assert (await p._cache.get(story_id)).state == fold(StoryState(story_id), events)


async def test_events_after_a_gap_are_caught_up_from_the_log_in_order():
    store = InMemoryEventStore()
    story_id = new_story_id()
    events = await logged(store, story_id, 6)
    p = projector(store)
    await p._project({story_id: events[:2]})
    assert await p._project({story_id: events[4:]}) == {}  # 3 and 4 never delivered: read from the log
    assert p.stats.healed_from_log >= 2
    assert await p._graph.applied_versions([story_id]) == {story_id: 6}
    assert (await p._cache.get(story_id)).version == 6
