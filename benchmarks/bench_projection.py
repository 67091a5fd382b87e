"""Projection throughput (events/s into the graph and Valkey) against the raw UNWIND MERGE rate of the
same server, and projection lag p50/p99 while events arrive at a steady rate."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import ray

from benchmarks.harness import BenchContext
from benchmarks.raw_graph import raw_unwind_merge_rate
from fleet_actors.actors.projector_actor import projector_status, start_projectors, stop_projectors
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.jobs.status import projection_status
from fleet_actors.loadgen.histories import story_history
from fleet_actors.loadgen.seed import seed

STORIES = int(os.environ.get("BENCH_PROJECTION_STORIES", "200"))
EVENTS = int(os.environ.get("BENCH_PROJECTION_EVENTS", "100"))
STEADY_RATE = int(os.environ.get("BENCH_STEADY_RATE", "500"))
STEADY_SECONDS = int(os.environ.get("BENCH_STEADY_SECONDS", "20"))


def _settings(ctx: BenchContext):
    tag = uuid.uuid4().hex[:6]
    return ctx.settings.replace(stream_name=f"PROJ{tag.upper()}", subject_prefix=f"proj{tag}.events",
                                ray_namespace=f"proj-{tag}")  # fmt: skip


async def _caught_up(settings) -> bool:
    status = await projection_status(settings)
    return bool(status) and all(s.lag_events == 0 for s in status)


async def _steady_load(settings, rate: int, seconds: int) -> int:
    """Appends ``rate`` events/s, one event per append (like single commands), over 50 stories."""
    stories, per_tick = 50, max(1, rate // 10)
    tag = uuid.uuid4().hex[:6]
    histories = [
        story_history(f"steady-{tag}-{n}", rate * seconds // stories + 2, start=datetime.now(UTC))
        for n in range(stories)
    ]
    heads, cursor = [0] * stories, [0] * stories
    store = await JetStreamEventStore.connect(settings)

    async def share(n: int, count: int) -> None:
        for _ in range(count):  # one story's appends are sequential, as through its actor
            envelope = histories[n][cursor[n]]
            cursor[n] += 1
            heads[n] = (await store.append(envelope.story_id, heads[n], [envelope])).last_sequence

    sent, started = 0, time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            tick = time.perf_counter()
            due = min(int(rate * elapsed) + per_tick, rate * seconds) - sent  # catches up after a slow tick
            first = sent % stories  # the remainder goes round the stories, so each gets its share
            counts = [due // stories + (1 if (n - first) % stories < due % stories else 0) for n in range(stories)]
            await asyncio.gather(*(share(n, c) for n, c in enumerate(counts) if c))
            sent += due
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
    finally:
        await store.close()
    return sent


@ray.remote(num_cpus=0)
class InstrumentationCost:
    def measure(self, batches: int, events: int, partitions: int) -> float:
        """Microseconds per event of a projector batch's metrics (ProjectionRunner._observe_batch and the
        gauges and counters process() sets), through ray.util.metrics as in a projector actor."""
        from types import SimpleNamespace

        from fleet_actors.observability.metrics import metrics
        from fleet_actors.projections.runner import ProjectionRunner

        now = datetime.now(UTC)
        msgs = [
            SimpleNamespace(
                subject=f"p.events.s{n}.summary_recorded.{n % partitions}",
                metadata=SimpleNamespace(num_delivered=1, num_pending=10, timestamp=now),
            )
            for n in range(events)
        ]
        fake = SimpleNamespace(names=SimpleNamespace(label="projector-0-of-2", parked_as=""))
        m = metrics()
        started = time.perf_counter()
        for _ in range(batches):
            m.parked.set(0, fake.names.label)
            m.projected_events.inc(fake.names.label, "applied", amount=events)
            ProjectionRunner._observe_batch(fake, msgs, msgs, started)  # type: ignore[arg-type]
            m.projector_heartbeat.set(time.time(), fake.names.label)
        return (time.perf_counter() - started) / (batches * events) * 1e6


def _projection_seconds(settings, total: int) -> float:
    asyncio.run(seed(settings, STORIES, EVENTS, prefix="p"))
    started = time.perf_counter()
    start_projectors(settings)
    while not asyncio.run(_caught_up(settings)):
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    stop_projectors(settings)
    return seconds


def run(ctx: BenchContext) -> dict[str, Any]:
    settings = _settings(ctx)
    total = STORIES * EVENTS
    asyncio.run(seed(settings, STORIES, EVENTS, prefix="p"))
    raw_rate = asyncio.run(raw_unwind_merge_rate(settings, total))

    started = time.perf_counter()
    start_projectors(settings)
    while not asyncio.run(_caught_up(settings)):
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    figures: dict[str, Any] = {
        "events": total,
        "projectors": settings.projectors,
        "projection_events_per_s": round(total / seconds, 1),
        "raw_unwind_merge_rows_per_s": round(raw_rate, 1),
        "ratio_to_raw_unwind_merge": round(total / seconds / raw_rate, 3),
        "note": "projection time includes projector start-up (actor creation, consumer binding)",
    }
    stop_projectors(settings)
    if os.environ.get("BENCH_PROJECTION_OBSERVABILITY", "1") != "0":
        # The same projection with metrics off in the projectors (FLEET_METRICS_ENABLED=0), then on
        # again, each on a fresh stream: the host drifts, so the "on" figure is the mean of both runs.
        bare = _projection_seconds(_settings(ctx).replace(metrics_enabled=False), total)
        again = _projection_seconds(_settings(ctx), total)
        figures["projection_no_metrics_events_per_s"] = round(total / bare, 1)
        figures["projection_metrics_on_again_events_per_s"] = round(total / again, 1)
        figures["metrics_overhead"] = round(1 - bare / ((seconds + again) / 2), 3)
        # The instrumentation alone: a batch's metric calls in a projector-like actor, per event,
        # against the CPU an event takes here (both cores' time divided by the projection rate).
        cost = InstrumentationCost.remote()
        per_event_us = min(ray.get([cost.measure.remote(5_000, 100, settings.partitions // 2) for _ in range(3)]))
        ray.kill(cost)
        figures["metrics_us_per_event"] = round(per_event_us, 2)
        figures["metrics_share_of_event_cpu"] = round(per_event_us / (2 * 1e6 * seconds / total), 4)
    # Lag on a fresh stream with fresh projectors, so no backlog from the phase above is in the samples.
    steady = _settings(ctx)
    asyncio.run(seed(steady, 1, 1, prefix="warm"))
    start_projectors(steady)
    sent = asyncio.run(_steady_load(steady, STEADY_RATE, STEADY_SECONDS))
    time.sleep(2)
    statuses = projector_status(steady)
    figures.update(
        {
            "steady_events_sent": sent,
            "steady_rate_target_per_s": STEADY_RATE,
            "steady_rate_achieved_per_s": round(sent / STEADY_SECONDS, 1),
            "lag_p50_ms": max(s.get("lag_p50_ms", 0.0) for s in statuses),
            "lag_p99_ms": max(s.get("lag_p99_ms", 0.0) for s in statuses),
        }
    )
    stop_projectors(steady)
    return figures
