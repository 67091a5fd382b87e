"""Where each projector stands: pending events, ack floor, lag in events and seconds, last error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors

from fleet_actors.adapters.jetstream import connect_nats, nats_errors
from fleet_actors.adapters.valkey import ContextCache, valkey_errors
from fleet_actors.projections.policy import LIVE_CONSUMERS, consumer_name, partition_consumer_name
from fleet_actors.projections.projector import status_key
from fleet_actors.settings import Settings


@dataclass(frozen=True)
class ConsumerStatus:
    consumer: str
    #: the projector of the pool (FLEET_PROJECTORS) that owns this consumer's partition
    projector: str
    pending: int
    ack_pending: int
    ack_floor: int
    redelivered: int
    lag_events: int
    lag_seconds: float
    applied: int
    parked: int
    commit_lag_p99_ms: float
    last_error: str


async def projection_status(settings: Settings) -> list[ConsumerStatus]:
    nc = await connect_nats(settings, name="fleet-status")
    cache = await ContextCache.connect(settings)
    try:
        jsm = nc.jsm()
        with nats_errors("listing consumers"):
            try:
                consumers = await jsm.consumers_info(settings.stream_name)
            except nats.js.errors.NotFoundError:
                return []
        out = []
        now = datetime.now(UTC)
        partition_of = {partition_consumer_name(LIVE_CONSUMERS, p): p for p in range(settings.partitions)}
        stats_of: dict[str, dict] = {}
        for info in sorted((c for c in consumers if c.name in partition_of), key=lambda c: partition_of[c.name]):
            projector = consumer_name(partition_of[info.name] % settings.projectors, settings.projectors)
            lag = (info.num_pending or 0) + (info.num_ack_pending or 0)
            lag_seconds = 0.0
            if lag:
                try:
                    oldest = await jsm.get_msg(settings.stream_name, seq=info.ack_floor.stream_seq + 1, direct=True)
                    if oldest.time:
                        lag_seconds = max(0.0, (now - oldest.time).total_seconds())
                except Exception:  # the oldest event may have been removed meanwhile: no age then
                    lag_seconds = 0.0
            if projector not in stats_of:
                with valkey_errors("reading a projector's status"):
                    raw = await cache.client.get(status_key(projector))
                stats_of[projector] = json.loads(raw) if raw else {}
            stats = stats_of[projector]
            out.append(
                ConsumerStatus(
                    consumer=info.name,
                    projector=projector,
                    pending=info.num_pending or 0,
                    ack_pending=info.num_ack_pending or 0,
                    ack_floor=info.ack_floor.stream_seq,
                    redelivered=info.num_redelivered or 0,
                    lag_events=lag,
                    lag_seconds=round(lag_seconds, 3),
                    applied=stats.get("applied", 0),
                    parked=stats.get("parked", 0),
                    commit_lag_p99_ms=stats.get("lag_p99_ms", 0.0),
                    last_error=stats.get("last_error", ""),
                )
            )
        return out
    finally:
        await cache.close()
        await nc.close()
