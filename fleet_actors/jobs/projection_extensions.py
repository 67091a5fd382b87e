"""Operator views of user projections (``projections/api.py``): one status row per runner, with
progress and an ETA, and the removal of a projection (consumers, checkpoint, progress, dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

from fleet_actors.adapters.jetstream import connect_nats
from fleet_actors.adapters.jetstream.consumers import consumer_lags, consumers, delete_consumers
from fleet_actors.adapters.valkey import ValkeyDeadLetterIndex
from fleet_actors.adapters.valkey.active_documents import ActiveDocuments
from fleet_actors.composition import (
    open_documents_projection,
    open_event_store,
    open_projection_checkpoints,
    open_projection_runner,
)
from fleet_actors.errors import ConfigurationError
from fleet_actors.projections.api import Projection
from fleet_actors.projections.policy import DEFAULT_POLICY, ProjectorPolicy, partition_consumer_name
from fleet_actors.projections.runner import ProjectionRunner, verify_projection
from fleet_actors.settings import Settings


@dataclass(frozen=True)
class ProjectionRow:
    #: ``{name}-v{version}``
    projection: str
    worker: str
    #: "archive" (catching up from the archive), "live", or "not running" (registered, no progress yet)
    phase: str
    partitions: str
    #: events not yet applied: the consumers' pending and unacknowledged, plus the archive's rest
    remaining: int
    applied: int
    parked: int
    rate: float
    #: seconds to catch up at the current rate ("" when unknown or nothing remains)
    eta_seconds: str
    lag_seconds: float
    last_error: str


async def projection_rows(settings: Settings) -> list[ProjectionRow]:
    checkpoints = await open_projection_checkpoints(settings)
    try:
        registered = await checkpoints.registered()
        progress = {projection: await checkpoints.progress(projection) for projection in registered}
    finally:
        await checkpoints.close()
    names = {
        partition_consumer_name(f"proj-{projection}", p): projection
        for projection in registered
        for p in range(settings.partitions)
    }
    lags = {lag.consumer: lag for lag in await consumer_lags(settings, set(names))} if names else {}
    rows = []
    for projection in registered:
        workers = progress[projection]
        if not workers:
            rows.append(ProjectionRow(projection, "", "not running", "", 0, 0, 0, 0.0, "", 0.0, ""))
        for worker, record in workers.items():
            partitions = list(record.get("partitions", []))
            mine = [lags[c] for p in partitions if (c := partition_consumer_name(f"proj-{projection}", p)) in lags]
            remaining = sum(lag.pending + lag.ack_pending for lag in mine)
            if record.get("phase") == "archive":
                remaining += max(0, int(record.get("archive_last", 0)) - int(record.get("archive_through", 0)))
            rate = float(record.get("rate", 0.0))
            rows.append(
                ProjectionRow(
                    projection=projection,
                    worker=worker,
                    phase=str(record.get("phase", "")),
                    partitions=",".join(str(p) for p in partitions),
                    remaining=remaining,
                    applied=int(record.get("applied", 0)),
                    parked=int(record.get("parked", 0)),
                    rate=rate,
                    eta_seconds=f"{remaining / rate:.0f}" if remaining and rate > 0 else "",
                    lag_seconds=max((lag.lag_seconds for lag in mine), default=0.0),
                    last_error=str(record.get("last_error", "")),
                )
            )
    return rows


async def remove_projection(settings: Settings, projection: str) -> list[str]:
    """Delete a projection's consumers, checkpoint, progress, registration and held stories (its own
    target is the user's to drop). Returns the consumers deleted. Stop its runners first."""
    nc = await connect_nats(settings, name="fleet-projection-remove")
    try:
        prefix = f"proj-{projection}-partition-"
        mine = [c.name for c in await consumers(nc, settings.stream_name) if c.name.startswith(prefix)]
        await delete_consumers(nc, settings.stream_name, mine)
    finally:
        await nc.close()
    checkpoints = await open_projection_checkpoints(settings)
    try:
        await checkpoints.remove(projection)
    finally:
        await checkpoints.close()
    index = await ValkeyDeadLetterIndex.connect(settings, projection)
    try:
        for story_id in await index.held():
            await index.released(story_id)
    finally:
        await index.close()
    return mine


async def run_projection(
    settings: Settings,
    projection: Projection,
    *,
    index: int = 0,
    count: int = 1,
    policy: ProjectorPolicy = DEFAULT_POLICY,
    until_caught_up: bool = False,
    report: Callable[[ProjectionRunner], None] | None = None,
) -> int:
    """Run one runner of a projection in this process until SIGTERM/SIGINT (or, with
    ``until_caught_up``, until its consumers have nothing pending); returns the events applied."""
    runner = await open_projection_runner(settings, projection, index, count, policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(runner.run(stop))
    try:
        while not stop.is_set() and not task.done():
            await asyncio.sleep(0.5)
            if report is not None:
                report(runner)
            if until_caught_up and runner.feed is not None and await runner.feed.drained():
                break
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.close()
    return runner.progress.applied


async def switch_documents(
    settings: Settings, version: int, *, check: bool = True, max_lag_seconds: float = 2.0
) -> list[str]:
    """Switch readers (every ``open_read_models``: the gateway, the read-model actors) to version
    ``version`` of the context documents, once it is live with no event waiting longer than
    ``max_lag_seconds`` and ``verify`` finds no difference (``check``); returns the differences
    (then nothing is switched). Version 1 (the live documents, always kept by the projectors) needs
    no check: it is the switch back."""
    if version >= 2 and check:
        projection = f"context-documents-v{version}"
        rows = [r for r in await projection_rows(settings) if r.projection == projection]
        if not rows or any(r.phase != "live" for r in rows):
            raise ConfigurationError(f"{projection} is not running live (run it first: docs/projections.md)")
        lag = max(r.lag_seconds for r in rows)
        if lag > max_lag_seconds:
            raise ConfigurationError(f"{projection} has not caught up: its oldest waiting event is {lag:.1f}s old")
        documents = await open_documents_projection(settings, version)
        store = await open_event_store(settings, update_stream=False)
        try:
            differences = await verify_projection(documents, store, await store.story_ids())
        finally:
            await store.close()
            await documents.close()
        if differences:
            return [d for story_differences in differences.values() for d in story_differences]
    active = await ActiveDocuments.connect(settings)
    try:
        await active.switch(version)
    finally:
        await active.close()
    return []
