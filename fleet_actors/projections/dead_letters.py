"""Poison events: parked in a dead-letter stream; their story waits until an operator decides.

A parked story is held: the projector acknowledges its later events without applying them (they
stay in the event log). ``retry`` or ``skip`` releases it, and its owning projector then reads the
missing events straight from the log, so nothing is applied out of order and nothing is lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from fleet_actors.errors import InvalidCommand, NothingParked
from fleet_actors.ports.read_models import DeadLetterIndex, ParkedEvent

__all__ = ["DeadLetters", "ParkedEvent", "now_iso"]


class ParkedEventLog(Protocol):
    """Where a poison event's bytes are kept (the dead-letter stream)."""

    async def ensure_stream(self) -> None: ...

    async def store(self, event: ParkedEvent, data: bytes) -> int: ...


class DeadLetters:
    def __init__(self, log: ParkedEventLog, index: DeadLetterIndex) -> None:
        self._log = log
        self._index = index

    async def ensure_stream(self) -> None:
        await self._log.ensure_stream()

    async def park(self, event: ParkedEvent, data: bytes) -> ParkedEvent:
        """Store the original bytes with the reason, then hold the story."""
        sequence = await self._log.store(event, data)
        parked = ParkedEvent(**{**event.__dict__, "dlq_sequence": sequence})
        await self._index.hold(parked)
        return parked

    async def held(self) -> dict[str, ParkedEvent]:
        return await self._index.held()

    async def request_release(self, story_id: str, action: str) -> ParkedEvent:
        """Ask the owning projector to retry the parked event, or to skip it, and catch the story up."""
        if action not in ("retry", "skip"):
            raise InvalidCommand("action must be retry or skip", field="action")
        held = await self.held()
        if story_id not in held:
            raise NothingParked(story_id)
        await self._index.request_release(story_id, action)
        return held[story_id]

    async def pending_releases(self) -> dict[str, str]:
        return await self._index.pending_releases()

    async def drop_release(self, story_id: str) -> None:
        """The release failed again (the story stays held): forget the request."""
        await self._index.drop_release(story_id)

    async def released(self, story_id: str) -> None:
        await self._index.released(story_id)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
