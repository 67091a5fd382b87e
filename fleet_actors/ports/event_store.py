"""The event store port: append with optimistic concurrency, read a story's events in order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from fleet_actors.domain.events import EventEnvelope

#: events per batch of ``EventStore.read_envelopes`` in stores without a batched read of their own
ENVELOPE_BATCH = 1000


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back, with its position in the log (the stream sequence)."""

    envelope: EventEnvelope
    sequence: int


@dataclass(frozen=True)
class AppendResult:
    #: stream sequence of the last appended event; the next append of this story expects it
    last_sequence: int
    #: True if the events were already stored by an earlier attempt (a retried append)
    already_stored: bool = False
    #: with ``already_stored``: an attempt of this very call timed out before they were found, so
    #: they are most likely its own (without it, they were there before the call began)
    after_timeout: bool = False


class EventStore(ABC):
    """One log for all stories; each story's events are totally ordered within it.

    Concurrency is checked per story at append: ``expected_sequence`` is the log sequence of
    the story's last event as the writer last saw it (0 for a new story). If another writer
    appended since, the append fails with ``ConcurrencyConflict`` and stores nothing. All events
    of one append are stored atomically.
    """

    @abstractmethod
    async def append(self, story_id: str, expected_sequence: int, events: Sequence[EventEnvelope]) -> AppendResult:
        """Append atomically. Raises ConcurrencyConflict, AppendOutcomeUnknown, BackendUnavailable."""

    @abstractmethod
    def read(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[StoredEvent]:
        """The story's events with a sequence above ``after_sequence``, in order."""

    async def read_envelopes(
        self, story_id: str, after_sequence: int = 0, *, wanted: int | None = None
    ) -> AsyncGenerator[list[EventEnvelope], None]:
        """The story's events after ``after_sequence``, decoded, in order and in batches, without their
        log positions: the fastest read, for callers that need only the events (history, temporal
        reads). The last batch may include events appended after the read began.

        ``wanted``: how many events the caller expects to need (a hint; every event is still
        yielded if it reads on): a store may make its first batch that size and read no further
        ahead until the caller asks for more (a temporal read folds a few hundred events of a story
        of thousands)."""
        batch: list[EventEnvelope] = []
        async for stored in self.read(story_id, after_sequence):
            batch.append(stored.envelope)
            if len(batch) >= ENVELOPE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    @abstractmethod
    def read_raw(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        """The story's events as stored (sequence, encoded bytes): for tools that must step over an
        event this code cannot decode."""

    @abstractmethod
    async def last_sequence(self, story_id: str) -> int:
        """Sequence of the story's last event, 0 if it has none."""

    @abstractmethod
    async def head_version(self, story_id: str) -> int:
        """The version of the story's last event, 0 if it has none (what a fresh read must reflect)."""

    @abstractmethod
    async def story_ids(self) -> list[str]:
        """Every story in the log (those with a creation event), sorted."""

    async def read_all(self, story_id: str, after_sequence: int = 0) -> list[StoredEvent]:
        return [event async for event in self.read(story_id, after_sequence)]

    async def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release connections; idempotent."""
