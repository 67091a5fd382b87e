"""A projector's feeds on one NATS connection: its partition consumers and the snapshot notices."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nats.aio.client import Client

from fleet_actors.adapters.jetstream.consumers import SnapshotFeed, partition_consumer_config
from fleet_actors.adapters.jetstream.partition_feed import PartitionFeed
from fleet_actors.ports.event_feed import EventFeed, PartitionConsumer, SnapshotNotices, StartSequence
from fleet_actors.settings import Settings


class JetStreamFeeds:
    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings

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
    ) -> EventFeed:
        return PartitionFeed(  # type: ignore[return-value]  # a nats-py Msg is a Delivery
            self._nc,
            self._settings.stream_name,
            consumers,
            lambda consumer: partition_consumer_config(
                consumer, ack_wait=ack_wait, max_ack_pending=max_ack_pending, start_sequence=start_of(consumer)
            ),
            fetch_size=fetch_size,
            end_sequence=end_sequence,
            on_error=on_error,
        )

    def snapshots(self, consumer: str, ack_wait: float) -> SnapshotNotices:
        return SnapshotFeed(self._nc, self._settings, consumer, ack_wait)

    async def close(self) -> None:
        await self._nc.close()
