"""One story's command loop: load, decide, append, evolve. The Ray actor is a thin shell around it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from fleet_actors.application.ids import new_id
from fleet_actors.application.messages import CommandRequest, CommandResult
from fleet_actors.domain import rules
from fleet_actors.domain.events import DecisionAdded, EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import Accepted, DecideContext, decide, evolve, ids_needed
from fleet_actors.errors import (
    AppendOutcomeUnknown,
    BackendUnavailable,
    ConcurrencyConflict,
    EventDecodeError,
    InvalidCommand,
)
from fleet_actors.ports.event_store import EventStore, StoredEvent

#: how many recent command ids a story remembers for idempotent retries
COMMAND_ID_WINDOW = 10_000


def utc_now() -> datetime:
    return datetime.now(UTC)


class StoryRuntime:
    """Holds one story's state and serialises its commands (one at a time, under a lock)."""

    def __init__(
        self,
        story_id: str,
        store: EventStore,
        *,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_id,
    ) -> None:
        self.story_id = rules.check_id(story_id, "story_id")
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self._lock = asyncio.Lock()
        self.state = StoryState(story_id)
        self.last_sequence = 0
        self._loaded = False
        self._results: OrderedDict[str, CommandResult] = OrderedDict()

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    async def load(self) -> None:
        """Rebuild the state from the store (from scratch)."""
        self.state = StoryState(self.story_id)
        self.last_sequence = 0
        self._results.clear()
        await self._catch_up()
        self._loaded = True

    async def _catch_up(self) -> None:
        """Fold the events appended since ``last_sequence`` (by us or by another writer)."""
        async for stored in self._store.read(self.story_id, self.last_sequence):
            self._apply(stored)

    def _apply(self, stored: StoredEvent) -> None:
        envelope = stored.envelope
        if envelope.version != self.state.version + 1:
            raise EventDecodeError(
                f"story {self.story_id!r}: event {envelope.event_id} has version {envelope.version}, "
                f"expected {self.state.version + 1}; the log is inconsistent"
            )
        self.state = evolve(self.state, envelope)
        self.last_sequence = stored.sequence
        self._remember(envelope)

    def _remember(self, envelope: EventEnvelope) -> None:
        if not envelope.command_id:
            return
        prior = self._results.get(envelope.command_id)
        decision_id = envelope.payload.decision_id if isinstance(envelope.payload, DecisionAdded) else None
        if prior is None:
            self._results[envelope.command_id] = CommandResult(
                self.story_id, envelope.version, (envelope.event_id,), envelope.command_id, decision_id
            )
            if len(self._results) > COMMAND_ID_WINDOW:
                self._results.popitem(last=False)
        else:
            self._results[envelope.command_id] = replace(
                prior,
                version=envelope.version,
                event_ids=(*prior.event_ids, envelope.event_id),
                decision_id=prior.decision_id or decision_id,
            )

    async def execute(self, request: CommandRequest) -> CommandResult:
        """Decide and append one command. Raises the typed StoryError on rejection."""
        if request.story_id != self.story_id:
            raise InvalidCommand(f"request for story {request.story_id!r} sent to {self.story_id!r}")
        rules.check_id(request.command_id, "command_id")
        async with self._lock:
            if not self._loaded:
                await self.load()
            for attempt in range(2):
                prior = self._results.get(request.command_id)
                if prior is not None:
                    return replace(prior, duplicate=True)
                if request.expected_version is not None and request.expected_version != self.state.version:
                    await self._catch_up()
                    if request.expected_version != self.state.version:
                        raise ConcurrencyConflict(
                            f"story {self.story_id!r} is at version {self.state.version}, "
                            f"not the expected {request.expected_version}",
                            expected=request.expected_version,
                            actual=self.state.version,
                        )
                fresh_ids = tuple(self._new_id() for _ in range(ids_needed(request.command)))
                decision = decide(self.state, request.command, DecideContext(fresh_ids))
                if not isinstance(decision, Accepted):
                    # Rejections are rare: before reporting one, make sure it was not decided on
                    # state that another writer has moved on from.
                    if attempt == 0 and await self._store.last_sequence(self.story_id) != self.last_sequence:
                        await self._catch_up()
                        continue
                    raise decision.error
                now = self._clock()
                envelopes = [
                    EventEnvelope(
                        event_id=self._new_id(),
                        story_id=self.story_id,
                        version=self.state.version + offset,
                        timestamp=now,
                        payload=event,
                        command_id=request.command_id,
                        actor=request.actor,
                    )
                    for offset, event in enumerate(decision.events, start=1)
                ]
                try:
                    appended = await self._store.append(self.story_id, self.last_sequence, envelopes)
                except ConcurrencyConflict:
                    # Another writer got there first: see what it did and decide once more.
                    await self._catch_up()
                    if attempt == 0:
                        continue
                    raise
                except (AppendOutcomeUnknown, BackendUnavailable):
                    # The append may or may not have landed: forget the state, reload next time.
                    self._loaded = False
                    raise
                for envelope in envelopes[:-1]:
                    self.state = evolve(self.state, envelope)
                    self._remember(envelope)
                self._apply(StoredEvent(envelopes[-1], appended.last_sequence))
                return self._results[request.command_id]
            raise AssertionError("unreachable")

    async def history(self, from_version: int = 1) -> list[EventEnvelope]:
        return [s.envelope async for s in self._store.read(self.story_id) if s.envelope.version >= from_version]
