"""`dev seed`'s reading of an append's outcome: a story found already stored exists, unless this
very append timed out before finding its events (they are then its own)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import StoryAlreadyExists
from fleet_actors.loadgen.histories import story_history
from fleet_actors.loadgen.seed import _append_story
from fleet_actors.ports.event_store import AppendResult


class FirstAppendFoundStored:
    """Answers the first append as found already stored, the others as plain appends."""

    def __init__(self, after_timeout: bool) -> None:
        self.after_timeout, self.calls = after_timeout, 0

    async def append(self, story_id: str, expected_sequence: int, events: Sequence[EventEnvelope]) -> AppendResult:
        self.calls += 1
        last = expected_sequence + len(events)
        if self.calls == 1:
            return AppendResult(last, already_stored=True, after_timeout=self.after_timeout)
        return AppendResult(last)


HISTORY = story_history("seeded", 2500, start=datetime(2026, 1, 1, tzinfo=UTC))


async def test_events_found_after_a_timed_out_attempt_are_the_seeds_own():
    store = FirstAppendFoundStored(after_timeout=True)
    await _append_story(store, HISTORY)
    assert store.calls > 1  # went on with the story's other batches


async def test_events_there_before_the_append_mean_the_story_exists():
    store = FirstAppendFoundStored(after_timeout=False)
    with pytest.raises(StoryAlreadyExists, match="seed with another --prefix"):
        await _append_story(store, HISTORY)
    assert store.calls == 1
