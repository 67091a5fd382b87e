"""Activating one story with 10,000 events: full replay vs newest snapshot + later events, next to a raw
(undecoded) read of the same events; plus a cold story actor through Ray with its snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import ray

from benchmarks.harness import BenchContext
from fleet_actors import FleetClient
from fleet_actors.actors.naming import story_actor_name
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.loadgen.histories import story_history

EVENTS = 10_000
TAIL = 50  # events after the newest snapshot (half the default cadence)
REPEATS = 5


async def _timed(make) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        await make()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _measure(settings, story_id: str) -> dict[str, Any]:
    store = await JetStreamEventStore.connect(settings)
    snapshots = JetStreamSnapshotStore(store.connection, settings)
    await snapshots.ensure_stream()
    history = story_history(story_id, EVENTS, start=datetime(2026, 1, 1, tzinfo=UTC))
    head = 0
    for first in range(0, EVENTS - TAIL, 1000):
        head = (await store.append(story_id, head, history[first : min(first + 1000, EVENTS - TAIL)])).last_sequence
    writer = StoryRuntime(story_id, store, snapshots=snapshots)
    await writer.rebuild_state()  # snapshot at v9,950
    head = (await store.append(story_id, head, history[EVENTS - TAIL :])).last_sequence

    async def raw_read() -> None:
        async for _ in store.read_raw(story_id):
            pass

    async def full_replay() -> None:
        await StoryRuntime(story_id, store).load()

    async def from_snapshot() -> None:
        runtime = StoryRuntime(story_id, store, snapshots=snapshots)
        await runtime.load()
        assert runtime.replayed_on_load == TAIL and runtime.state.version == EVENTS

    raw = await _timed(raw_read)
    full = await _timed(full_replay)
    snap = await _timed(from_snapshot)
    await store.close()
    return {
        "events": EVENTS,
        "raw_read_s": round(raw, 3),
        "raw_read_events_per_s": round(EVENTS / raw, 1),
        "activation_full_replay_s": round(full, 3),
        "replay_events_per_s": round(EVENTS / full, 1),
        "replay_ratio_to_raw_read": round(raw / full, 3),
        "activation_with_snapshot_s": round(snap, 4),
        "snapshot_reduction_percent": round(100 * (1 - snap / full), 2),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    settings = ctx.settings.replace(stream_name=f"ACT{tag.upper()}", subject_prefix=f"act{tag}.events")
    story_id = f"big-{tag}"
    figures = asyncio.run(_measure(settings, story_id))
    # Through Ray: a passivated actor re-created by name (worker start, connect, snapshot, 50 events).
    client = FleetClient(settings)
    client.get_story(story_id)
    handle = ray.get_actor(story_actor_name(story_id), namespace=settings.ray_namespace)
    with contextlib.suppress(ray.exceptions.RayActorError):
        ray.get(handle.passivate.remote())
    time.sleep(1.0)
    started = time.perf_counter()
    assert client.get_story(story_id).version == EVENTS
    figures["cold_actor_activation_with_snapshot_s"] = round(time.perf_counter() - started, 3)
    return figures
