"""Through the gRPC gateway: GetContext and CreateTask requests/s and p50/p99 with concurrent clients;
the cost of fresh reads (GetContext of caught-up stories with FLEET_FRESH_READ_TIMEOUT on and off, in
alternating rounds, and a read right after a write); GetContextAtTime latency on a 10,000-event story
with and without snapshots."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc

from benchmarks.harness import BenchContext, latency_summary
from fleet_actors import FleetClient
from fleet_actors.actors.projector_actor import start_projectors, stop_projectors
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import evolve
from fleet_actors.gateway import gateway_in_thread
from fleet_actors.loadgen.histories import story_history
from fleet_actors.ports.snapshot_store import Snapshot
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc

CLIENTS = 8
CALLS = 1600
BIG = 10_000
TEMPORAL_QUERIES = 40


async def _load(address: str, make_call, calls: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ContextServiceStub(channel)

        async def client(n: int) -> None:
            rng = random.Random(n)
            for i in range(calls // CLIENTS):
                started = time.perf_counter()
                await make_call(stub, rng, n, i)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        return time.perf_counter() - started, latencies


async def _big_story(settings, story_id: str, snapshots: bool) -> None:
    """10,000 events appended directly; with a snapshot every 100 events if asked."""
    store = await JetStreamEventStore.connect(settings)
    snapshot_store = JetStreamSnapshotStore(store.connection, settings)
    await snapshot_store.ensure_stream()
    history = story_history(story_id, BIG, start=datetime(2026, 1, 1, tzinfo=UTC))
    head, state = 0, StoryState(story_id)
    for first in range(0, BIG, 100):
        chunk = history[first : first + 100]
        head = (await store.append(story_id, head, chunk)).last_sequence
        for envelope in chunk:
            state = evolve(state, envelope)
        if snapshots:
            await snapshot_store.save(Snapshot(state, head))
    await store.close()


def _fresh_read_cost(settings, fresh_address: str, stories: list[str], get_context) -> dict[str, Any]:
    """GetContext of caught-up stories, fresh reads on (the default) against off, alternating rounds;
    then UpdateContext followed at once by GetContext, with the version it served."""
    rounds: dict[str, list[float]] = {"fresh": [], "off": []}
    with gateway_in_thread(settings.replace(fresh_read_timeout=0.0)) as plain:
        for _ in range(3):
            for name, address in (("fresh", fresh_address), ("off", plain.address)):
                _, latencies = asyncio.run(_load(address, get_context, CALLS // 4))
                rounds[name].extend(latencies)
    fresh, off = latency_summary(rounds["fresh"]), latency_summary(rounds["off"])
    figures: dict[str, Any] = {f"get_context_fresh_{k}": v for k, v in fresh.items()}
    figures.update({f"get_context_fresh_off_{k}": v for k, v in off.items()})
    figures["fresh_read_p50_cost_ms"] = round(fresh["p50_ms"] - off["p50_ms"], 2)

    async def write_then_read() -> tuple[list[float], int]:
        latencies, stale = [], 0
        async with grpc.aio.insecure_channel(fresh_address) as channel:
            stub = pb_grpc.ContextServiceStub(channel)
            for i in range(40):
                story_id = stories[i % len(stories)]
                change = pb.ContextChange(operation="CREATE", entity_type="MILESTONE", entity_id=f"m{i}",
                                          payload='{"event": "benchmark"}')  # fmt: skip
                written = await stub.UpdateContext(pb.UpdateContextRequest(story_id=story_id, changes=[change]))
                started = time.perf_counter()
                read = await stub.GetContext(pb.GetContextRequest(story_id=story_id, role="DEV", phase="BUILD"))
                latencies.append(time.perf_counter() - started)
                stale += int(read.version) < written.version
        return latencies, stale

    latencies, stale = asyncio.run(write_then_read())
    figures.update({f"read_after_write_{k}": v for k, v in latency_summary(latencies).items()})
    figures["read_after_write_stale"] = stale
    return figures


def run(ctx: BenchContext) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    settings = ctx.settings.replace(stream_name=f"GW{tag.upper()}", subject_prefix=f"gw{tag}.events",
                                    ray_namespace=f"gw-{tag}", snapshot_keep=120)  # fmt: skip
    client = FleetClient(settings)
    stories = [f"gw-{tag}-{n}" for n in range(20)]
    for story_id in stories:
        client.create_story(story_id, "gateway benchmark")
        client.create_subtask(story_id, "T1", "work", "DEV")
        last = client.add_decision(story_id, "JWT", "stateless")
    start_projectors(settings)
    for story_id in stories:
        client.wait_for_projection(story_id, last.version, timeout=60)
    asyncio.run(_big_story(settings, f"big-{tag}-snap", snapshots=True))
    asyncio.run(_big_story(settings, f"big-{tag}-plain", snapshots=False))

    async def get_context(stub, rng, n, i):
        await stub.GetContext(pb.GetContextRequest(story_id=rng.choice(stories), role="DEV", phase="BUILD"))

    async def create_task(stub, rng, n, i):
        await stub.CreateTask(pb.CreateTaskRequest(story_id=rng.choice(stories), task_id=f"t{n}-{i}",
                                                   title="benchmark task", role="DEV"))  # fmt: skip

    figures: dict[str, Any] = {"clients": CLIENTS, "calls": CALLS}
    with gateway_in_thread(settings) as gateway:
        for name, call in (("get_context", get_context), ("create_task", create_task)):
            seconds, latencies = asyncio.run(_load(gateway.address, call, CALLS))
            figures[f"{name}_per_s"] = round(CALLS / seconds, 1)
            figures.update({f"{name}_{k}": v for k, v in latency_summary(latencies).items()})
        figures.update(_fresh_read_cost(settings, gateway.address, stories, get_context))
        versions = random.Random(7).sample(range(1, BIG + 1), TEMPORAL_QUERIES)
        for kind in ("snap", "plain"):
            story_id = f"big-{tag}-{kind}"

            async def at_version(stub, rng, n, i, story_id=story_id):
                version = versions[(n * 1000 + i) % len(versions)]
                await stub.GetContextAtTime(pb.GetContextAtTimeRequest(story_id=story_id, role="DEV", version=version))

            async def timed(address=gateway.address, at_version=at_version):
                latencies = []
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = pb_grpc.ContextServiceStub(channel)
                    for i in range(TEMPORAL_QUERIES):
                        started = time.perf_counter()
                        await at_version(stub, None, 0, i)
                        latencies.append(time.perf_counter() - started)
                return latencies

            label = "with_snapshots" if kind == "snap" else "without_snapshots"
            figures.update({f"at_time_{label}_{k}": v for k, v in latency_summary(asyncio.run(timed())).items()})
    stop_projectors(settings)
    return figures
