"""Graph blue/green under load: read latency and staleness of the graph as readers see it
(``open_read_models``: ActiveGraph) while version 2 of the graph catches up in a database of its own,
against the same figures with no rebuild running (the baseline of the same run), then after the switch.

Phases, each with a steady command load (one event per append) and readers querying the graph:
``before`` (version 1 only), ``catch_up`` (version 2 catching up from the first event beside it),
``after`` (readers switched to version 2). Staleness of a read: how long ago the first event the
answer lacks was acknowledged (0 when the answer is at the story's head).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from benchmarks.bench_projection import _caught_up
from benchmarks.harness import BenchContext, latency_summary, percentile
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.neo4j.graph_databases import GraphDatabases, graph_database
from fleet_actors.composition import open_graph_projection, open_projection_runner, open_projector, open_read_models
from fleet_actors.jobs.projection_extensions import switch_readers
from fleet_actors.loadgen.histories import story_history
from fleet_actors.loadgen.seed import seed

STORIES = int(os.environ.get("BENCH_BG_STORIES", "100"))
EVENTS = int(os.environ.get("BENCH_BG_EVENTS", "100"))
RATE = float(os.environ.get("BENCH_BG_RATE", "20"))  # appends per second
PHASE_SECONDS = float(os.environ.get("BENCH_BG_PHASE_SECONDS", "10"))
LIVE = 10  # stories written during the phases


def run(ctx: BenchContext) -> dict[str, Any]:
    return asyncio.run(_run(ctx))


async def _run(ctx: BenchContext) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    settings = ctx.settings.replace(
        stream_name=f"BG{tag.upper()}", subject_prefix=f"bg{tag}.events", neo4j_database=f"bg{tag}"
    )
    admin = GraphDatabases(ctx.settings)
    await admin.create(settings.neo4j_database)
    await seed(settings, STORIES, EVENTS, prefix=f"bg{tag}")
    live_ids = [f"bg{tag}-live-{n}" for n in range(LIVE)]
    histories = {s: story_history(s, 100_000 // LIVE, start=datetime.now(UTC)) for s in live_ids}
    acked: dict[str, list[float]] = {s: [] for s in live_ids}  # acked[s][v - 1]: when version v was acknowledged
    store = await JetStreamEventStore.connect(settings)
    stop_live = asyncio.Event()
    projector = await open_projector(settings, 0, 1)
    live_task = asyncio.create_task(projector.run(stop_live))
    read_models = await open_read_models(settings)
    samples: dict[str, list[tuple[float, float]]] = {}  # phase -> (latency, staleness)
    phase = "warm-up"
    stop = asyncio.Event()

    async def writer() -> None:
        last = dict.fromkeys(live_ids, 0)  # each story's last stream sequence (the append's expectation)
        i = 0
        while not stop.is_set():
            story = live_ids[i % LIVE]
            envelope = histories[story][len(acked[story])]
            last[story] = (await store.append(story, last[story], [envelope])).last_sequence
            acked[story].append(time.monotonic())
            i += 1
            await asyncio.sleep(1 / RATE)

    async def reader() -> None:
        i = 0
        while not stop.is_set():
            story = live_ids[i % LIVE]
            i += 1
            head = len(acked[story])
            started = time.monotonic()
            node, _ = await read_models.graph.neighbourhood("story", story, 1, 50)
            done = time.monotonic()
            version = node["version"] if node else 0
            stale = done - acked[story][version] if version < head else 0.0
            samples.setdefault(phase, []).append((done - started, stale))
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(writer())]
    figures: dict[str, Any] = {"stories": STORIES + LIVE, "seeded_events": STORIES * EVENTS, "rate_per_s": RATE}
    try:
        deadline = time.monotonic() + 300
        while not all(acked.values()) or not await _caught_up(settings):  # version 1 has the seeded log
            if time.monotonic() > deadline:
                figures["note"] = "version 1 had not caught up with the seeded log when the phases began"
                break
            await asyncio.sleep(0.2)
        tasks.append(asyncio.create_task(reader()))
        await asyncio.sleep(2)
        phase = "before"
        await asyncio.sleep(PHASE_SECONDS)
        phase = "catch_up"
        graph = await open_graph_projection(settings, 2)
        runner = await open_projection_runner(settings, graph)
        stop_runner = asyncio.Event()
        runner_task = asyncio.create_task(runner.run(stop_runner))
        started = time.monotonic()
        assert runner.feed is not None
        while not await runner.feed.drained():
            await asyncio.sleep(0.2)
        figures["catch_up_seconds"] = round(time.monotonic() - started, 1)
        figures["catch_up_events_per_s"] = round(runner.progress.applied / (time.monotonic() - started), 1)
        phase = "switch"
        started = time.monotonic()
        while await _switch(settings) is False:
            await asyncio.sleep(0.2)
        figures["switch_seconds_with_verify"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(1.0)  # readers' 0.5 s cache of the active version
        phase = "after"
        await asyncio.sleep(PHASE_SECONDS)
        stop.set()
        await asyncio.gather(*tasks)
        stop_runner.set()
        await runner_task
        await runner.close()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await switch_readers(settings, "graph", 1)
        await read_models.close()
        stop_live.set()
        await live_task
        await projector.close()
        await store.close()
        for version in (2, 1):
            with contextlib.suppress(Exception):
                await admin.drop(graph_database(settings, version))
    for name in ("before", "catch_up", "after"):
        latencies = [latency for latency, _ in samples.get(name, [])]
        staleness = [stale for _, stale in samples.get(name, [])]
        figures[f"{name}_reads"] = len(latencies)
        figures.update({f"{name}_read_{k}": v for k, v in latency_summary(latencies).items() if k != "mean_ms"})
        figures[f"{name}_staleness_p99_s"] = round(percentile(staleness, 99), 3)
        figures[f"{name}_staleness_max_s"] = round(max(staleness, default=0.0), 3)
    for q in ("p50", "p99"):
        before, during = figures[f"before_read_{q}_ms"], figures[f"catch_up_read_{q}_ms"]
        figures[f"catch_up_{q}_ratio_to_before"] = round(during / before, 2) if before else float("nan")
    figures["uptime_load"] = os.getloadavg()[0]
    return figures


async def _switch(settings) -> bool:
    try:
        return await switch_readers(settings, "graph", 2) == []
    except Exception:  # not live or not caught up yet
        return False
