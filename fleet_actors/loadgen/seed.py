"""`fleet-actors dev seed`: write generated histories straight into the event stream in atomic batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.event_store import MAX_BATCH
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import ConcurrencyConflict, InvalidCommand, StoryAlreadyExists
from fleet_actors.loadgen.histories import story_history
from fleet_actors.ports.event_store import EventStore
from fleet_actors.settings import Settings


@dataclass(frozen=True)
class SeedReport:
    stories: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def seed(
    settings: Settings,
    stories: int,
    events_per_story: int,
    *,
    prefix: str = "seed",
    seed_value: int = 0,
    window: int = 64,
    progress: Callable[[int, int, float], None] | None = None,
) -> SeedReport:
    """Append ``stories`` new stories of ``events_per_story`` events each; stories must not exist yet."""
    if stories < 1 or events_per_story < 1:
        raise InvalidCommand("--stories and --events must be at least 1", field="stories")
    store = await JetStreamEventStore.connect(settings)
    started = time.monotonic()
    written = 0
    start = datetime.now(UTC) - timedelta(days=30)
    try:
        for first in range(0, stories, window):
            batch = [f"{prefix}-{number:07d}" for number in range(first, min(first + window, stories))]
            histories = [story_history(sid, events_per_story, seed=seed_value, start=start) for sid in batch]
            await asyncio.gather(*(_append_story(store, history) for history in histories))
            written += sum(len(h) for h in histories)
            if progress:
                progress(written, stories * events_per_story, time.monotonic() - started)
    finally:
        await store.close()
    return SeedReport(stories, written, time.monotonic() - started)


async def _append_story(store: EventStore, history: Sequence[EventEnvelope]) -> None:
    sequence = 0
    story_id = history[0].story_id
    for start in range(0, len(history), MAX_BATCH):
        try:
            result = await store.append(story_id, sequence, history[start : start + MAX_BATCH])
        except ConcurrencyConflict:
            if start:
                raise
            result = None
        # The first batch expects a new story: a conflict, or the same events found at its head (a
        # re-run with the same seed), means it exists already; found after an attempt of this
        # append timed out, they are that attempt's.
        if start == 0 and (result is None or (result.already_stored and not result.after_timeout)):
            exists = StoryAlreadyExists(story_id)
            exists.message = f"{exists.message}: seed with another --prefix"
            exists.args = (exists.message,)
            raise exists
        assert result is not None
        sequence = result.last_sequence
