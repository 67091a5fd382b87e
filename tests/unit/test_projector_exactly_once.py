"""The built-in read models' exactly-once and gap rules, on the runner every projection uses, over the
in-memory ports: redeliveries change nothing, a read model behind the events at hand is caught up
from the log, in order, and a graph behind its documents is healed (milliseconds, no servers)."""

from __future__ import annotations

from fleet_actors.adapters.memory import (
    InMemoryDeadLetterIndex,
    InMemoryDocuments,
    InMemoryEventStore,
    InMemoryGraph,
    InMemoryProjectionControl,
)
from fleet_actors.adapters.memory.read_models import InMemoryProjectionCheckpoints
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.ports.read_models import ParkedEvent
from fleet_actors.projections.dead_letters import DeadLetters
from fleet_actors.projections.read_models_projection import ReadModelsProjection
from fleet_actors.projections.runner import ProjectionRunner, RunnerNames
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


def projector(store: InMemoryEventStore) -> ProjectionRunner:
    projection = ReadModelsProjection(graph=InMemoryGraph(), documents=InMemoryDocuments(), store=store)
    return ProjectionRunner(
        projection, Settings(), 0, 1, feeds=None, store=store, checkpoints=InMemoryProjectionCheckpoints(),  # type: ignore[arg-type]
        dead_letters=DeadLetters(ParkedInMemory(), InMemoryDeadLetterIndex()), control=InMemoryProjectionControl(),
        names=RunnerNames("projector-v1", "projector", "projector-0-of-1", parked_as="", registered=False),
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
    assert await p.project({story_id: events}) == {}
    assert await p.project({story_id: events[1:] + events[:2]}) == {}  # again, and out of order
    assert p.progress.applied == 4 and p.progress.skipped_duplicates == 5  # every delivered copy not applied
    assert await p.projection.graph.applied_versions([story_id]) == {story_id: 4}
    assert (await p.projection.documents.get(story_id)).state == fold(StoryState(story_id), events)


async def test_events_after_a_gap_are_caught_up_from_the_log_in_order():
    store = InMemoryEventStore()
    story_id = new_story_id()
    events = await logged(store, story_id, 6)
    p = projector(store)
    await p.project({story_id: events[:2]})
    assert await p.project({story_id: events[4:]}) == {}  # 3 and 4 never delivered: read from the log
    assert p.progress.healed_from_log >= 2
    assert await p.projection.graph.applied_versions([story_id]) == {story_id: 6}
    assert (await p.projection.documents.get(story_id)).version == 6


async def test_a_graph_behind_its_documents_is_caught_up_from_the_log():
    store = InMemoryEventStore()
    story_id = new_story_id()
    events = await logged(store, story_id, 5)
    p = projector(store)
    assert await p.project({story_id: events[:3]}) == {}
    await p.projection.graph.wipe_stories([story_id])  # a rebuild wiped it; the documents stayed at 3
    assert await p.project({story_id: events[3:]}) == {}
    assert await p.projection.graph.applied_versions([story_id]) == {story_id: 5}
    assert (await p.projection.documents.get(story_id)).state == fold(StoryState(story_id), events)


async def test_the_batch_positions_are_committed_with_the_documents():
    store = InMemoryEventStore()
    story_id = new_story_id()
    events = await logged(store, story_id, 2)
    p = projector(store)
    assert await p.project({story_id: events}, {"s.projector-partition-3": 41}) == {}
    assert await p.projection.documents.offset("s.projector-partition-3") == 41
    assert await p.projection.documents.already_processed([e.event_id for e in events]) == {e.event_id for e in events}
