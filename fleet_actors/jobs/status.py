"""``fleet-actors projections status``: where each projector of a deployment stands."""

from __future__ import annotations

from typing import Any

from fleet_actors.adapters.jetstream.consumers import consumer_lags
from fleet_actors.composition import open_projection_control
from fleet_actors.projections.policy import LIVE_CONSUMERS, consumer_name, partition_consumer_name
from fleet_actors.projections.status import ConsumerStatus
from fleet_actors.settings import Settings


async def projection_status(settings: Settings) -> list[ConsumerStatus]:
    control = await open_projection_control(settings)
    try:
        partition_of = {partition_consumer_name(LIVE_CONSUMERS, p): p for p in range(settings.partitions)}
        lags = await consumer_lags(settings, set(partition_of))
        out = []
        stats_of: dict[str, dict[str, Any]] = {}
        for lag in sorted(lags, key=lambda c: partition_of[c.consumer]):
            projector = consumer_name(partition_of[lag.consumer] % settings.projectors, settings.projectors)
            if projector not in stats_of:
                stats_of[projector] = await control.status(projector)
            stats = stats_of[projector]
            out.append(
                ConsumerStatus(
                    consumer=lag.consumer,
                    projector=projector,
                    pending=lag.pending,
                    ack_pending=lag.ack_pending,
                    ack_floor=lag.ack_floor,
                    redelivered=lag.redelivered,
                    lag_events=lag.pending + lag.ack_pending,
                    lag_seconds=lag.lag_seconds,
                    applied=stats.get("applied", 0),
                    parked=stats.get("parked", 0),
                    commit_lag_p99_ms=stats.get("lag_p99_ms", 0.0),
                    last_error=stats.get("last_error", ""),
                )
            )
        return out
    finally:
        await control.close()
