"""Snapshots of story state: a history per story, found by version or by time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

from fleet_actors.domain.results import CommandResult
from fleet_actors.domain.state import StoryState


@dataclass(frozen=True)
class Snapshot:
    state: StoryState
    #: event-log sequence of the last event folded into ``state``: replay resumes after it
    last_sequence: int
    #: recent command results, so idempotent retries keep working after activation from a snapshot
    recent_commands: tuple[CommandResult, ...] = ()
    #: 0 when ``recent_commands`` is the story's whole idempotency window; else the log sequence from
    #: which the rest of the window (older command ids, not carried) is read back on activation
    window_start_sequence: int = 0

    @property
    def story_id(self) -> str:
        return self.state.story_id

    @property
    def version(self) -> int:
        return self.state.version


@dataclass(frozen=True)
class SnapshotRef:
    """Where a snapshot is, and what it covers, without decoding it."""

    story_id: str
    version: int
    at: datetime | None
    position: int


class SnapshotStore(ABC):
    @abstractmethod
    async def save(self, snapshot: Snapshot) -> None: ...

    @abstractmethod
    async def refs(self, story_id: str) -> list[SnapshotRef]:
        """The story's snapshots, oldest first."""

    @abstractmethod
    async def load(self, ref: SnapshotRef) -> Snapshot:
        """Raises EventDecodeError for a snapshot this code cannot read."""

    async def latest(
        self, story_id: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        """The newest readable snapshot at or before ``max_version`` / ``at``; unreadable ones are passed over."""
        from fleet_actors.errors import EventDecodeError

        for ref in reversed(await self.refs(story_id)):
            if max_version is not None and ref.version > max_version:
                continue
            if at is not None and (ref.at is None or ref.at > at):
                continue
            try:
                return await self.load(ref)
            except EventDecodeError:
                continue  # corrupt or from the future: an older one, or full replay, will do
        return None

    async def sequence_before(self, story_id: str, version: int) -> int:
        """Where a read of the events from ``version`` on may start: the log sequence of the newest
        snapshot below ``version`` (0: none, read from the story's start)."""
        snapshot = await self.latest(story_id, max_version=version - 1) if version > 1 else None
        return snapshot.last_sequence if snapshot is not None else 0
