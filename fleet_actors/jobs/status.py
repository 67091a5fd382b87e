"""``fleet-actors projections status``: where each projector of a deployment stands."""

from __future__ import annotations

import time
from typing import Any

from fleet_actors.adapters.jetstream.consumers import consumer_lags
from fleet_actors.composition import open_dead_letter_index, open_projection_control
from fleet_actors.projections.policy import LIVE_CONSUMERS, consumer_name, partition_consumer_name
from fleet_actors.projections.status import ConsumerStatus
from fleet_actors.settings import Settings

#: a projector whose status is older than this is shown as down (it publishes every second)
HEARTBEAT_STALE_SECONDS = 10.0


def consumer_state(stats: dict[str, Any], paused_by: str, lag_events: int, now: float) -> tuple[str, float | None]:
    """What a consumer's projector is doing, from its published status and the rebuild's pause."""
    beat = float(stats.get("heartbeat") or 0.0)
    age = round(now - beat, 1) if beat else None
    if age is None or age > HEARTBEAT_STALE_SECONDS:
        down = "down (no heartbeat)" if age is None else f"down (no heartbeat for {age:.0f} s)"
        return (f"{down}; paused by rebuild {paused_by}" if paused_by else down), age
    if paused_by:
        return f"paused by rebuild {paused_by}", age
    return ("running" if lag_events else "idle"), age


async def projection_status(settings: Settings, now: float | None = None) -> list[ConsumerStatus]:
    """Every live partition consumer with its projector's state (``now``: the time to judge heartbeats by)."""
    control = await open_projection_control(settings)
    index = await open_dead_letter_index(settings)
    try:
        paused_by = await control.pausing_job() or ""
        parked_of: dict[str, int] = {}
        for parked in (await index.held()).values():
            if parked.subject.startswith(f"{settings.subject_prefix}."):  # this stream's (the index is shared)
                parked_of[parked.consumer] = parked_of.get(parked.consumer, 0) + 1
        now = time.time() if now is None else now
        partition_of = {partition_consumer_name(LIVE_CONSUMERS, p): p for p in range(settings.partitions)}
        lags = await consumer_lags(settings, set(partition_of))
        out = []
        stats_of: dict[str, dict[str, Any]] = {}
        for lag in sorted(lags, key=lambda c: partition_of[c.consumer]):
            projector = consumer_name(partition_of[lag.consumer] % settings.projectors, settings.projectors)
            if projector not in stats_of:
                stats_of[projector] = await control.status(projector)
            stats = stats_of[projector]
            lag_events = lag.pending + lag.ack_pending
            state, age = consumer_state(stats, paused_by, lag_events, now)
            out.append(
                ConsumerStatus(
                    consumer=lag.consumer,
                    projector=projector,
                    pending=lag.pending,
                    ack_pending=lag.ack_pending,
                    ack_floor=lag.ack_floor,
                    redelivered=lag.redelivered,
                    lag_events=lag_events,
                    lag_seconds=lag.lag_seconds,
                    applied=stats.get("applied", 0),
                    # stories held now for this consumer's parked events (a released one no longer counts)
                    parked=parked_of.get(lag.consumer, 0),
                    commit_lag_p99_ms=stats.get("lag_p99_ms", 0.0),
                    last_error=stats.get("last_error", ""),
                    state=state,
                    heartbeat_age_s=age,
                    paused_by=paused_by,
                    last_error_at=stats.get("last_error_at", "") if stats.get("last_error") else "",
                    writes=", ".join(f"{name} v{v}" for name, v in sorted((stats.get("targets") or {}).items())),
                )
            )
        return out
    finally:
        await index.close()
        await control.close()


async def pausing_rebuild(settings: Settings) -> str:
    """The rebuild job keeping the live projectors off the graph ("" when none)."""
    control = await open_projection_control(settings)
    try:
        return await control.pausing_job() or ""
    finally:
        await control.close()
