"""Projection policies as values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProjectorPolicy:
    #: messages fetched per pull (and applied per graph transaction at most)
    batch_size: int = 500
    #: seconds a pull waits for messages before looping (to notice releases and stop requests)
    fetch_timeout: float = 1.0
    #: attempts at an event that fails for a reason of its own before it is parked in the DLQ
    max_deliver: int = 5
    #: seconds JetStream waits for an ack before redelivering (after a crash)
    ack_wait: float = 30.0
    #: first and largest pause while a read model is unavailable
    backoff_initial: float = 0.2
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_deliver < 1:
            raise ValueError("batch_size and max_deliver must be at least 1")
        if self.fetch_timeout <= 0 or self.ack_wait <= 0 or self.backoff_initial <= 0:
            raise ValueError("durations must be positive")


DEFAULT_POLICY = ProjectorPolicy()


def owned_partitions(index: int, count: int, partitions: int) -> list[int]:
    """Projector ``index`` of ``count`` owns every partition p with p % count == index."""
    if not 0 <= index < count <= partitions:
        raise ValueError(f"projector {index} of {count} does not fit {partitions} partitions")
    return [p for p in range(partitions) if p % count == index]


def consumer_name(index: int, count: int) -> str:
    """A projector's name (its stats, its logs): stable across restarts and re-scheduling."""
    return f"projector-{index}-of-{count}"


#: the live projectors' consumers: ``projector-partition-{p}`` and the shared ``projector-snapshots``
LIVE_CONSUMERS = "projector"


def partition_consumer_name(prefix: str, partition: int) -> str:
    """One durable consumer per partition: the name does not depend on how many projectors share them."""
    return f"{prefix}-partition-{partition}"


def snapshot_consumer_name(prefix: str) -> str:
    return f"{prefix}-snapshots"
