"""One contract for every EventStore: the in-memory fake and JetStream must both pass it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from fleet_actors.domain.events import ContextCreated, EventEnvelope, SubtaskCreated, SummaryRecorded
from fleet_actors.errors import ConcurrencyConflict
from fleet_actors.ports.event_store import EventStore


def envelope(story_id: str, version: int, payload=None, event_id: str | None = None) -> EventEnvelope:
    return EventEnvelope(
        event_id or uuid.uuid4().hex,
        story_id,
        version,
        datetime.now(UTC),
        payload or SummaryRecorded(f"v{version}"),
    )


class EventStoreContract:
    """Subclasses provide an async ``store`` fixture."""

    @pytest.fixture
    def story_id(self) -> str:
        return "S" + uuid.uuid4().hex[:12]

    async def test_new_story_is_empty(self, store: EventStore, story_id):
        assert await store.last_sequence(story_id) == 0
        assert await store.head_version(story_id) == 0
        assert await store.read_all(story_id) == []

    async def test_head_version_and_story_listing(self, store: EventStore, story_id):
        first = await store.append(story_id, 0, [envelope(story_id, 1, ContextCreated("t"))])
        await store.append(story_id, first.last_sequence, [envelope(story_id, 2), envelope(story_id, 3)])
        assert await store.head_version(story_id) == 3
        assert story_id in await store.story_ids()
        raw = [sequence async for sequence, _ in store.read_raw(story_id)]
        assert raw == [e.sequence for e in await store.read_all(story_id)]

    async def test_append_then_read_in_order(self, store: EventStore, story_id):
        first = await store.append(story_id, 0, [envelope(story_id, 1, ContextCreated("t"))])
        second = await store.append(
            story_id, first.last_sequence, [envelope(story_id, 2, SubtaskCreated("T1", "x")), envelope(story_id, 3)]
        )
        events = await store.read_all(story_id)
        assert [e.envelope.version for e in events] == [1, 2, 3]
        assert events[-1].sequence == second.last_sequence == await store.last_sequence(story_id)
        assert [e.envelope.version for e in await store.read_all(story_id, first.last_sequence)] == [2, 3]

    async def test_stale_expected_sequence_conflicts_and_stores_nothing(self, store: EventStore, story_id):
        await store.append(story_id, 0, [envelope(story_id, 1)])
        with pytest.raises(ConcurrencyConflict):
            await store.append(story_id, 0, [envelope(story_id, 1), envelope(story_id, 2)])
        assert len(await store.read_all(story_id)) == 1

    async def test_concurrency_is_per_story(self, store: EventStore, story_id):
        other = story_id + "b"
        await store.append(other, 0, [envelope(other, 1)])
        await store.append(story_id, 0, [envelope(story_id, 1)])  # other story's writes don't matter

    async def test_twenty_concurrent_writers_exactly_one_wins(self, store: EventStore, story_id):
        head = (await store.append(story_id, 0, [envelope(story_id, 1)])).last_sequence
        results = await asyncio.gather(
            *(store.append(story_id, head, [envelope(story_id, 2)]) for _ in range(20)), return_exceptions=True
        )
        winners = [r for r in results if not isinstance(r, Exception)]
        assert len(winners) == 1
        assert all(isinstance(r, ConcurrencyConflict) for r in results if isinstance(r, Exception))
        assert [e.envelope.version for e in await store.read_all(story_id)] == [1, 2]

    async def test_retried_append_that_landed_is_success(self, store: EventStore, story_id):
        events = [envelope(story_id, 1), envelope(story_id, 2)]
        first = await store.append(story_id, 0, events)
        again = await store.append(story_id, 0, events)
        assert again.already_stored and again.last_sequence == first.last_sequence
        assert len(await store.read_all(story_id)) == 2
