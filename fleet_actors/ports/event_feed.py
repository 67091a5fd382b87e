"""The projectors' view of the log: durable per-partition feeds of deliveries, and the notices of
saved snapshots. JetStream implements them (``adapters/jetstream``); a delivery is acknowledged once
its effects are committed, so a crash redelivers it and the read models' version guards skip it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class PartitionConsumer:
    """A durable consumer of one partition of the log."""

    name: str
    partition: int
    filter_subject: str


def partition_of(subject: str) -> int:
    """Stored event subjects end in their partition token (see ``ensure_event_stream``)."""
    return int(subject.rsplit(".", 1)[1])


def story_of(subject: str) -> str:
    """{prefix}.{story_id}.{event_type}.{partition}; the prefix itself may contain dots."""
    return subject.rsplit(".", 3)[-3]


class SequencePair(Protocol):
    @property
    def stream(self) -> int: ...


class DeliveryMetadata(Protocol):
    @property
    def sequence(self) -> SequencePair: ...

    @property
    def timestamp(self) -> datetime: ...


class Delivery(Protocol):
    """One stored event as delivered: its subject, bytes and position (a nats-py ``Msg`` is one)."""

    @property
    def subject(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def metadata(self) -> DeliveryMetadata: ...


class EventFeed(Protocol):
    """Batches of deliveries from several partition consumers; order is kept within a partition."""

    @property
    def names(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def next_batch(self, max_msgs: int, timeout: float) -> list[Delivery]:
        """Up to ``max_msgs``: waits up to ``timeout`` for the first (``TimeoutError`` if none came)."""
        ...

    def finished(self) -> bool: ...

    async def drained(self) -> bool: ...

    async def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        """Done with these: never delivered again."""
        ...

    async def retry_later(self, deliveries: Sequence[Delivery], delay: float) -> None:
        """Deliver these again after ``delay`` seconds."""
        ...

    async def still_working(self, deliveries: Sequence[Delivery]) -> None:
        """Not yet done: do not redeliver them meanwhile."""
        ...

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Taken but not processed: handed to the next reader when the feed stops."""
        ...

    async def stop(self) -> None: ...


class SnapshotNotice(Protocol):
    """A snapshot was saved: the story, the version it covers and its time (ISO, or "")."""

    @property
    def story_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def at(self) -> str: ...

    async def done(self) -> None: ...

    async def later(self, delay: float) -> None: ...


class SnapshotNotices(Protocol):
    async def open(self) -> None: ...

    async def poll(self, limit: int = 200) -> Sequence[SnapshotNotice]:
        """Notices waiting, without waiting for any."""
        ...

    async def close(self) -> None: ...


#: where a partition consumer that does not exist yet starts (None: the beginning of the log)
StartSequence = Callable[[PartitionConsumer], "int | None"]


class Feeds(Protocol):
    """Opens a projector's feeds on one connection to the log."""

    def partitions(
        self,
        consumers: Sequence[PartitionConsumer],
        start_of: StartSequence,
        *,
        ack_wait: float,
        max_ack_pending: int,
        fetch_size: int,
        end_sequence: int | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> EventFeed: ...

    def snapshots(self, consumer: str, ack_wait: float) -> SnapshotNotices: ...

    async def close(self) -> None: ...
