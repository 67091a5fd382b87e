"""Consumer administration (nats.py's split: stream and consumer management apart from the data
plane): the projectors' partition consumers and their configuration, the shared snapshot consumer,
orphan clean-up, and listings for status and rebuilds."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from fleet_actors.adapters.jetstream.connection import (
    ERR_CONSUMER_NOT_FOUND,
    connect_nats,
    ensure_event_stream,
    nats_errors,
)
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore, snapshot_stream
from fleet_actors.ports.event_feed import PartitionConsumer
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)


def partition_consumer_config(
    consumer: PartitionConsumer,
    *,
    ack_wait: float,
    max_ack_pending: int,
    start_sequence: int | None = None,
) -> ConsumerConfig:
    """A durable, explicitly acknowledged consumer of one partition from ``start_sequence`` (or the start)."""
    return ConsumerConfig(
        durable_name=consumer.name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_sequence else DeliverPolicy.ALL,
        opt_start_seq=start_sequence,
        filter_subject=consumer.filter_subject,
        ack_wait=ack_wait,
        # Poison events are counted by us (transient outages must not exhaust a budget).
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )


async def consumers(nc: Client, stream: str) -> list[ConsumerInfo]:
    """The stream's consumers ([] when the stream does not exist)."""
    with nats_errors(f"listing the consumers of stream {stream}"):
        try:
            return list(await nc.jsm().consumers_info(stream))
        except nats.js.errors.NotFoundError:
            return []


async def delete_consumers(nc: Client, stream: str, names: Sequence[str]) -> None:
    """Delete these consumers; ones already gone are fine."""
    jsm = nc.jsm()
    with nats_errors(f"deleting consumers of stream {stream}"):
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await jsm.delete_consumer(stream, name)


async def prepare_partition_consumers(
    settings: Settings, wanted: set[str], prefix: str, keep_snapshot_consumer: str
) -> int | None:
    """Delete orphaned consumers named ``prefix...`` (those not ``wanted``); returns where missing
    partition consumers must start from (the slowest orphan's ack floor + 1, if only orphans exist)."""
    nc = await connect_nats(settings, name="fleet-projector-pool")
    try:
        await ensure_event_stream(nc, settings)
        existing = await consumers(nc, settings.stream_name)
        orphans = [c for c in existing if c.name.startswith(prefix) and c.name not in wanted]
        present = {c.name for c in existing}
        start = None
        if orphans and not wanted & present:
            # Resume where the slowest old consumer stood: nothing skipped; repeats are no-ops.
            start = min(c.ack_floor.stream_seq if c.ack_floor else 0 for c in orphans) + 1
        await delete_consumers(nc, settings.stream_name, [c.name for c in orphans])
        stale = [
            c.name
            for c in await consumers(nc, snapshot_stream(settings))
            if c.name.startswith(prefix) and c.name != keep_snapshot_consumer
        ]
        await delete_consumers(nc, snapshot_stream(settings), stale)
        return start
    finally:
        await nc.close()


@dataclass(frozen=True)
class SnapshotNotice:
    """A snapshot was saved: the story, the version it covers and its time (ISO, or "")."""

    story_id: str
    version: int
    at: str
    msg: Msg

    async def done(self) -> None:
        with nats_errors("acknowledging a snapshot notice"), contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await self.msg.ack()

    async def later(self, delay: float) -> None:
        with nats_errors("handing a snapshot notice back"), contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await self.msg.nak(delay=delay)


class SnapshotFeed:
    """A durable consumer of the snapshot stream, shared by a projector pool (any projector can link
    any story's snapshot) or by one rebuild's replayers; re-created if deleted under it."""

    def __init__(self, nc: Client, settings: Settings, name: str, ack_wait: float) -> None:
        self._nc = nc
        self._settings = settings
        self._name = name
        self._ack_wait = ack_wait
        self._sub: nats.js.JetStreamContext.PullSubscription | None = None

    async def open(self) -> None:
        with nats_errors("creating the snapshot consumer"):
            self._sub = await self._bind()

    async def _bind(self) -> nats.js.JetStreamContext.PullSubscription:
        jsm = self._nc.jsm()
        stream = snapshot_stream(self._settings)
        await JetStreamSnapshotStore(self._nc, self._settings).ensure_stream()
        try:
            await jsm.consumer_info(stream, self._name)
        except nats.js.errors.NotFoundError:
            await jsm.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=self._name, ack_policy=AckPolicy.EXPLICIT, ack_wait=self._ack_wait, max_deliver=-1
                ),
            )
        js = self._nc.jetstream(timeout=self._settings.nats_timeout)
        return await js.pull_subscribe_bind(durable=self._name, stream=stream)

    async def poll(self, limit: int = 200) -> list[SnapshotNotice]:
        """Snapshots waiting, without waiting for any ([] if none)."""
        assert self._sub is not None, "open() first"
        with nats_errors("polling the snapshot consumer"):
            try:
                info = await self._sub.consumer_info()
            except nats.js.errors.NotFoundError as error:
                if error.err_code != ERR_CONSUMER_NOT_FOUND:
                    raise
                # Deleted by hand or lost with the server's state: create it again (as the partition
                # consumers are); snapshots read a second time are idempotent MERGEs.
                log.warning("the snapshot consumer %s was missing; re-creating it", self._name)
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
                self._sub = await self._bind()
                return []
        if not (info.num_pending or info.num_ack_pending):
            return []  # an empty fetch would wait out its timeout
        with nats_errors("polling the snapshot consumer"):
            try:
                msgs = await self._sub.fetch(limit, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                return []
        notices = []
        for msg in msgs:
            headers = msg.headers or {}
            story_id = msg.subject.rsplit(".", 2)[-2]
            notices.append(
                SnapshotNotice(story_id, int(headers.get("Fleet-Version", "0")), headers.get("Fleet-At", ""), msg)
            )
        return notices

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


@dataclass(frozen=True)
class ConsumerLag:
    consumer: str
    pending: int
    ack_pending: int
    ack_floor: int
    redelivered: int
    #: age of the oldest event not yet acknowledged (0 when none)
    lag_seconds: float


async def consumer_lags(settings: Settings, names: set[str]) -> list[ConsumerLag]:
    """Where the named consumers of the event stream stand (those that exist)."""
    nc = await connect_nats(settings, name="fleet-status")
    try:
        jsm = nc.jsm()
        now = datetime.now(UTC)
        out = []
        for info in await consumers(nc, settings.stream_name):
            if info.name not in names:
                continue
            ack_floor = info.ack_floor.stream_seq if info.ack_floor else 0
            lag = (info.num_pending or 0) + (info.num_ack_pending or 0)
            lag_seconds = 0.0
            if lag:
                try:
                    oldest = await jsm.get_msg(settings.stream_name, seq=ack_floor + 1, direct=True)
                    if oldest.time:
                        lag_seconds = max(0.0, (now - oldest.time).total_seconds())
                except Exception:  # the oldest event may have been removed meanwhile: no age then
                    lag_seconds = 0.0
            out.append(
                ConsumerLag(
                    consumer=info.name,
                    pending=info.num_pending or 0,
                    ack_pending=info.num_ack_pending or 0,
                    ack_floor=ack_floor,
                    redelivered=info.num_redelivered or 0,
                    lag_seconds=round(lag_seconds, 3),
                )
            )
        return out
    finally:
        await nc.close()
