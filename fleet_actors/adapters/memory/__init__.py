"""Honest in-memory fakes of every port, for tests: the same rules as the real adapters."""

from fleet_actors.adapters.memory.event_store import InMemoryEventStore
from fleet_actors.adapters.memory.read_models import (
    InMemoryDeadLetterIndex,
    InMemoryDocuments,
    InMemoryGraph,
    InMemoryProjectionCheckpoints,
    InMemoryProjectionControl,
)
from fleet_actors.adapters.memory.snapshot_store import InMemorySnapshotStore

__all__ = [
    "InMemoryDeadLetterIndex",
    "InMemoryDocuments",
    "InMemoryEventStore",
    "InMemoryGraph",
    "InMemoryProjectionCheckpoints",
    "InMemoryProjectionControl",
    "InMemorySnapshotStore",
]
