"""What a user projection (``projections/api.py``) needs besides its feed: a per-story checkpoint
when its target does not keep one itself, the registration that ``projections status`` lists, the
progress its runners publish, and the archived part of the log for catching up from the start.

Valkey implements the checkpoints (``adapters/valkey/projection_checkpoints.py``), the in-memory
fake is ``adapters/memory``; the contract suite is ``tests/contracts/checkpoint_contract.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class ProjectionCheckpoints(ABC):
    """Per projection (``{name}-v{version}``): each story's applied version, moving only forward."""

    @abstractmethod
    async def versions(self, projection: str, story_ids: Sequence[str]) -> dict[str, int]:
        """The version applied for each story (0 for stories never applied)."""

    @abstractmethod
    async def advance(self, projection: str, versions: Mapping[str, int]) -> None:
        """Atomically record these versions, each only if higher than the one recorded."""

    @abstractmethod
    async def register(self, projection: str, record: Mapping[str, Any]) -> None:
        """Record (or refresh) a registered projection: name, version, partitions, started_at ..."""

    @abstractmethod
    async def registered(self) -> dict[str, dict[str, Any]]:
        """Every registered projection id with its record."""

    @abstractmethod
    async def publish_progress(self, projection: str, worker: str, progress: Mapping[str, Any]) -> None:
        """One runner's progress (delivered, applied, last sequence, head, rate ...), for status."""

    @abstractmethod
    async def progress(self, projection: str) -> dict[str, dict[str, Any]]:
        """Every runner's last published progress, by worker name."""

    @abstractmethod
    async def remove(self, projection: str) -> None:
        """Forget the projection: its registration, checkpoints and progress."""

    @abstractmethod
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ArchivedRow:
    """One archived event: its stream sequence, stored subject (ending in its partition) and bytes."""

    sequence: int
    subject: str
    data: bytes


class ArchivedEvents(Protocol):
    """The part of the log moved to the archive (FLEET_ARCHIVE_URL), read in sequence order."""

    async def last_sequence(self) -> int:
        """The highest archived stream sequence (0: nothing archived)."""
        ...

    def rows(self, partitions: Sequence[int], after: int, up_to: int) -> AsyncIterator[Sequence[ArchivedRow]]:
        """Chunks of the archived events of these partitions with ``after < sequence <= up_to``, in order."""
        ...
