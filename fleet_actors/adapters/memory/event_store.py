"""An honest in-memory event store: same conflict and atomicity rules as JetStream. For tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from fleet_actors.codec import encode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import ConcurrencyConflict
from fleet_actors.ports.event_store import AppendResult, EventStore, StoredEvent


class InMemoryEventStore(EventStore):
    def __init__(self) -> None:
        self._log: list[StoredEvent] = []
        self._last: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def append(self, story_id: str, expected_sequence: int, events: Sequence[EventEnvelope]) -> AppendResult:
        async with self._lock:
            actual = self._last.get(story_id, 0)
            if actual != expected_sequence:
                tail = [e for e in self._log if e.envelope.story_id == story_id and e.sequence == actual]
                if events and tail and tail[0].envelope.event_id == events[-1].event_id:
                    return AppendResult(actual, already_stored=True)
                raise ConcurrencyConflict(
                    f"story {story_id!r} changed: expected last sequence {expected_sequence}, found {actual}",
                    expected=expected_sequence,
                    actual=actual,
                )
            for envelope in events:
                self._log.append(StoredEvent(envelope, len(self._log) + 1))
            self._last[story_id] = len(self._log)
            return AppendResult(len(self._log))

    async def read(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[StoredEvent]:
        for event in list(self._log):
            if event.envelope.story_id == story_id and event.sequence > after_sequence:
                yield event

    async def read_raw(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        async for event in self.read(story_id, after_sequence):
            yield event.sequence, encode_event(event.envelope)

    async def head_version(self, story_id: str) -> int:
        versions = [e.envelope.version for e in self._log if e.envelope.story_id == story_id]
        return versions[-1] if versions else 0

    async def story_ids(self) -> list[str]:
        return sorted({e.envelope.story_id for e in self._log if e.envelope.version == 1})

    async def last_sequence(self, story_id: str) -> int:
        return self._last.get(story_id, 0)
