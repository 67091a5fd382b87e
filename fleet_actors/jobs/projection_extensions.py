"""Operator views of user projections (``projections/api.py``): one status row per runner, with
progress and an ETA, and the removal of a projection (consumers, checkpoint, progress, dead letters);
blue/green of the built-in read models (deploy version n, switch readers, drop a version)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet_actors.adapters.jetstream import connect_nats
from fleet_actors.adapters.jetstream.consumers import consumer_lags, consumers, delete_consumers
from fleet_actors.adapters.neo4j.graph_databases import GraphDatabases, graph_database
from fleet_actors.adapters.valkey import ContextCache, ValkeyDeadLetterIndex, connect_valkey
from fleet_actors.adapters.valkey.active_documents import space_of
from fleet_actors.adapters.valkey.active_version import ActiveVersion
from fleet_actors.composition import (
    open_event_store,
    open_projection_checkpoints,
    open_projection_control,
    open_projection_runner,
    open_read_model_version,
)
from fleet_actors.errors import ConfigurationError
from fleet_actors.jobs.status import HEARTBEAT_STALE_SECONDS, pausing_rebuild
from fleet_actors.projections.api import Projection, optional_hook, projection_id
from fleet_actors.projections.policy import (
    DEFAULT_POLICY,
    ProjectorPolicy,
    partition_consumer_name,
    snapshot_consumer_name,
)
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
        prefix = f"proj-{projection}"
        mine = [
            c.name
            for c in await consumers(nc, settings.stream_name)
            if c.name.startswith(f"{prefix}-partition-") or c.name == snapshot_consumer_name(prefix)
        ]
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


#: each built-in read model that can run as version n beside the live one (version 1, written by the
#: projectors) and be switched to by readers -> its projection's name (``{name}-v{n}`` in
#: ``projections status``, and its readers' pointer); the versions are opened by
#: ``composition.open_read_model_version``
BLUE_GREEN = {"documents": "context-documents", "graph": "graph"}


def _projection_name(read_model: str) -> str:
    if read_model not in BLUE_GREEN:
        raise ConfigurationError(f"no blue/green for {read_model!r}: one of {sorted(BLUE_GREEN)}", field="read_model")
    return BLUE_GREEN[read_model]


async def verify_against_replay(
    settings: Settings, projection: Projection, story_ids: Sequence[str] = ()
) -> dict[str, list[str]]:
    """A projection's ``verify`` hook against a replay of each story (every story by default):
    ``{story: differences}``, empty when equal; ConfigurationError when it has no hook."""
    if optional_hook(projection, "verify") is None:
        raise ConfigurationError(f"projection {projection_id(projection)} has no verify hook", field="projection")
    store = await open_event_store(settings, update_stream=False)
    try:
        return await verify_projection(projection, store, list(story_ids) or await store.story_ids())
    finally:
        await store.close()


async def deploy_version(settings: Settings, read_model: str, version: int, **options: Any) -> int:
    """Run version ``version`` (2 or more) of a built-in read model beside the live one, catching up
    from the first event on its own target (created if missing): ``run_projection`` with ``options``."""
    projection = await open_read_model_version(settings, read_model, version)
    await mark_deployed(settings, read_model, version)
    return await run_projection(settings, projection, **options)


async def mark_deployed(settings: Settings, read_model: str, version: int) -> None:
    """A version deployed again after a drop is built afresh: it may be switched to once it verifies."""
    async with _pointers(settings, read_model) as pointers:
        await pointers.readers.mark_dropped(version, dropped=False)


def version_id(read_model: str, version: int) -> str:
    """``graph-v2``, ``context-documents-v3``: the projection id of a built-in read model's version."""
    return f"{_projection_name(read_model)}-v{version}"


@dataclass
class _Pointers:
    """A built-in read model's pointers on one connection: the version readers read (and the versions
    dropped) and the version the live projectors write."""

    readers: ActiveVersion
    writers: ActiveVersion


@contextlib.asynccontextmanager
async def _pointers(settings: Settings, read_model: str) -> AsyncIterator[_Pointers]:
    name = _projection_name(read_model)
    client = await connect_valkey(settings)
    try:
        readers = ActiveVersion(client, settings.stream_name, name)
        yield _Pointers(readers, ActiveVersion(client, settings.stream_name, name, written=True))
    finally:
        await client.aclose()


async def active_version(settings: Settings, read_model: str) -> int:
    """The version of a built-in read model readers read."""
    async with _pointers(settings, read_model) as pointers:
        return await pointers.readers.get()


async def written_version(settings: Settings, read_model: str) -> int:
    """The version of a built-in read model the live projectors write (1 until ``promote``)."""
    async with _pointers(settings, read_model) as pointers:
        return await pointers.writers.get()


async def _projectors_writing(settings: Settings, read_model: str, version: int) -> list[str]:
    """The live projectors (a heartbeat in the last seconds) that report writing this version."""
    control = await open_projection_control(settings)
    try:
        writing = []
        for name, status in sorted((await control.statuses()).items()):
            fresh = time.time() - float(status.get("heartbeat") or 0.0) <= HEARTBEAT_STALE_SECONDS
            if fresh and int((status.get("targets") or {}).get(read_model, 1)) == version:
                writing.append(name)
        return writing
    finally:
        await control.close()


async def _check_live_and_caught_up(settings: Settings, projection: str, max_lag_seconds: float) -> None:
    rows = [r for r in await projection_rows(settings) if r.projection == projection]
    if not rows or any(r.phase != "live" for r in rows):
        raise ConfigurationError(f"{projection} is not running live (deploy it first: docs/projections.md)")
    lag = max(r.lag_seconds for r in rows)
    if lag > max_lag_seconds:
        raise ConfigurationError(f"{projection} has not caught up: its oldest waiting event is {lag:.1f}s old")


async def promote_version(settings: Settings, read_model: str, version: int, *, max_lag_seconds: float = 2.0) -> None:
    """Make the live projectors write version ``version`` of a built-in read model (the one readers
    read, live and caught up on its own runner): they reopen on it within seconds, their consumers
    and positions unchanged, each story going on from the version the target holds. Its runner can
    then be stopped, and the version written before dropped once nobody reads it."""
    name = _projection_name(read_model)
    async with _pointers(settings, read_model) as pointers:
        if version == await pointers.writers.get():
            return
        if await pointers.readers.get() != version:
            raise ConfigurationError(f"readers do not read version {version} of the {read_model}: switch them first")
        if version in await pointers.readers.dropped():
            raise ConfigurationError(f"version {version} of the {read_model} was dropped")
        if version < 2:
            raise ConfigurationError(
                f"version 1 of the {read_model} is no longer written and would be behind: deploy a new version "
                "instead", field="version",
            )  # fmt: skip
        job = await pausing_rebuild(settings)
        if job:
            # The rebuild replays into the version written when it began; handing the projectors
            # another one meanwhile would leave it rebuilding a graph nobody writes any more.
            raise ConfigurationError(
                f"rebuild {job} is rebuilding what the live projectors write: promote once it has ended "
                f"(`fleet-actors rebuild status {job}`)"
            )
        await _check_live_and_caught_up(settings, f"{name}-v{version}", max_lag_seconds)
        await pointers.writers.switch(version)


async def switch_readers(
    settings: Settings, read_model: str, version: int, *, check: bool = True, max_lag_seconds: float = 2.0
) -> list[str]:
    """Switch readers (every ``open_read_models``: the gateway, the read-model actors) to version
    ``version`` of a built-in read model (``documents`` or ``graph``), once it is live with no event
    waiting longer than ``max_lag_seconds`` and ``verify`` finds no difference (``check``); returns
    the differences (then nothing is switched). Version 1 (the live one, always kept by the
    projectors) needs no check: it is the switch back."""
    name = _projection_name(read_model)
    async with _pointers(settings, read_model) as pointers:
        dropped, written = await pointers.readers.dropped(), await pointers.writers.get()
    if version in dropped:
        raise ConfigurationError(f"version {version} of the {read_model} was dropped: deploy a new version")
    if version == 1 and written != 1:
        raise ConfigurationError(
            f"version 1 of the {read_model} is no longer written (the projectors write version {written}): "
            "it would serve old data", field="version",
        )  # fmt: skip
    if version >= 2 and version != written and check:
        await _check_live_and_caught_up(settings, f"{name}-v{version}", max_lag_seconds)
        target = await open_read_model_version(settings, read_model, version)
        try:
            differences = await verify_against_replay(settings, target)
        finally:
            close = optional_hook(target, "close")
            if close is not None:
                await close()  # type: ignore[misc]
        if differences:
            return [d for story_differences in differences.values() for d in story_differences]
    async with _pointers(settings, read_model) as pointers:
        await pointers.readers.switch(version)
    return []


async def switch_when_ready(
    settings: Settings, read_model: str, version: int, *, wait: float, every: float = 2.0,
    max_lag_seconds: float = 2.0, on_wait: Callable[[str], None] | None = None,
) -> list[str]:  # fmt: skip
    """The switch policy "as soon as it has caught up and verifies": ``switch_readers`` with its
    checks, tried every ``every`` seconds for up to ``wait`` seconds. Returns [] once switched, else
    the last reason it was not (not live, lagging, or the differences found)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            reasons = await switch_readers(settings, read_model, version, max_lag_seconds=max_lag_seconds)
        except ConfigurationError as error:
            reasons = [error.message]
        if not reasons:
            return []
        if asyncio.get_running_loop().time() + every > deadline:
            return reasons
        if on_wait is not None:
            on_wait(reasons[0])
        await asyncio.sleep(every)


async def switch_documents(
    settings: Settings, version: int, *, check: bool = True, max_lag_seconds: float = 2.0
) -> list[str]:
    """``switch_readers`` for the context documents."""
    return await switch_readers(settings, "documents", version, check=check, max_lag_seconds=max_lag_seconds)


async def drop_version(settings: Settings, read_model: str, version: int) -> None:
    """Drop version ``version`` of a built-in read model that nobody reads or writes any more: its
    consumers, checkpoint, progress and held stories (``remove_projection``), then its target (the
    graph's database; this stream's context documents of that version), and remember it as dropped
    (never switched to again). Stop its runner first. Refused while readers read it or the live
    projectors write it (version 1 until another version is promoted)."""
    name = _projection_name(read_model)
    async with _pointers(settings, read_model) as pointers:
        read, written = await pointers.readers.get(), await pointers.writers.get()
    if read == version:
        raise ConfigurationError(f"readers read version {version} of the {read_model}: switch them first")
    if written == version:
        raise ConfigurationError(
            f"the live projectors write version {version} of the {read_model}: promote another version first"
        )
    if writing := await _projectors_writing(settings, read_model, version):
        raise ConfigurationError(f"{', '.join(writing)} still write version {version}: wait for them to reopen")
    await remove_projection(settings, f"{name}-v{version}")
    if read_model == "graph":
        await GraphDatabases(settings).drop(graph_database(settings, version), live_too=version == 1)
    else:
        store = await open_event_store(settings, update_stream=False)
        documents = await ContextCache.connect(settings, space=space_of(version))
        try:
            await documents.drop_stories(await store.story_ids())
        finally:
            await documents.close()
            await store.close()
    async with _pointers(settings, read_model) as pointers:
        await pointers.readers.mark_dropped(version)
