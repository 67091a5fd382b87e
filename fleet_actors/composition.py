"""The composition root: the one place that builds stores and connections from settings.

Story actors, projector and replay actors, the gateway, the CLI and the rebuild job all open what
they need here, so which adapter serves which port (and how connections are shared and closed) is
decided once. Everything outside ``adapters/`` and this module works against ``ports/``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client

from fleet_actors.adapters.archive import Archive, ArchivedEventStore
from fleet_actors.adapters.archive.archived_rows import ArchiveRows
from fleet_actors.adapters.jetstream import JetStreamEventStore, connect_nats, ensure_event_stream
from fleet_actors.adapters.jetstream.connection import stream_exists
from fleet_actors.adapters.jetstream.dead_letter_stream import DeadLetterStream
from fleet_actors.adapters.jetstream.feeds import JetStreamFeeds
from fleet_actors.adapters.jetstream.retention import StreamRetention
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.neo4j.graph_databases import GraphDatabases, graph_database
from fleet_actors.adapters.valkey import (
    ActiveDocuments,
    BundleStore,
    ContextCache,
    ValkeyDeadLetterIndex,
    ValkeyProjectionCheckpoints,
    ValkeyProjectionControl,
    connect_valkey,
    valkey_client,
)
from fleet_actors.adapters.valkey.active_documents import space_of
from fleet_actors.adapters.valkey.active_version import ActiveVersion, ReadModelVersions, read_model_versions
from fleet_actors.application.active_graph import ActiveGraph
from fleet_actors.application.read_models import ReadModels
from fleet_actors.archive.archiver import SEGMENT_EVENTS, Archiver
from fleet_actors.archive.export import ExportReport, check_since
from fleet_actors.archive.export import export_events as export_stream
from fleet_actors.errors import ConfigurationError
from fleet_actors.ports.checkpoints import ProjectionCheckpoints
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.read_models import ContextDocuments, GraphReadModel, ProjectionControl
from fleet_actors.ports.snapshot_store import SnapshotStore
from fleet_actors.projections.api import Projection, projection_id
from fleet_actors.projections.dead_letters import DeadLetters
from fleet_actors.projections.policy import (
    DEFAULT_POLICY,
    LIVE_CONSUMERS,
    ProjectorPolicy,
    consumer_name,
)
from fleet_actors.projections.read_models_projection import (
    ContextDocumentsProjection,
    GraphProjection,
    ReadModelsProjection,
)
from fleet_actors.projections.rebuild import REPLAY_POLICY, Replayer
from fleet_actors.projections.runner import ProjectionRunner, RunnerNames
from fleet_actors.settings import Settings

__all__ = [
    "ReadSide",
    "archiver_on",
    "documents_projection_v2",
    "export_events",
    "open_archiver",
    "open_dead_letters",
    "open_documents_projection",
    "open_event_store",
    "open_existing_stream",
    "open_gateway_stores",
    "open_graph_projection",
    "open_projection_checkpoints",
    "open_projection_control",
    "open_projection_runner",
    "open_projector",
    "open_read_models",
    "open_read_side",
    "open_reader_stores",
    "open_replayer",
    "open_story_stores",
    "open_stream_reader",
]


async def open_event_store(
    settings: Settings, nc: Client | None = None, *, update_stream: bool = True, owns_connection: bool = False
) -> EventStore:
    """The event store every reader should use: archive + stream when FLEET_ARCHIVE_URL is set.

    With ``nc`` the store shares that connection (and closes it if ``owns_connection``); otherwise
    it opens (and owns) its own and declares the stream (``update_stream``: see
    JetStreamEventStore.connect).
    """
    if nc is not None:
        stream = JetStreamEventStore(nc, settings, owns_connection=owns_connection)
    else:
        stream = await JetStreamEventStore.connect(settings, update_stream=update_stream)
    if not settings.archive_url:
        return stream
    return ArchivedEventStore(stream, Archive(settings.archive_url, settings.stream_name), settings)


async def open_stream_reader(settings: Settings) -> EventStore:
    """The stream alone (no archive): enough to tell whether a story exists, since the archiver always
    keeps a story's head in the stream. Does not update an existing stream's settings."""
    return await JetStreamEventStore.connect(settings, update_stream=False)


async def open_existing_stream(settings: Settings) -> EventStore | None:
    """The stream's event store, or None when the stream does not exist (read-only tools must not create it)."""
    nc = await connect_nats(settings)
    try:
        exists = await stream_exists(nc, settings.stream_name)
    except BaseException:
        await nc.close()
        raise
    if not exists:
        await nc.close()
        return None
    return JetStreamEventStore(nc, settings, owns_connection=True)


async def open_story_stores(settings: Settings) -> tuple[EventStore, SnapshotStore]:
    """A story actor's stores, on one NATS connection (owned by the event store): both or neither."""
    nc = await connect_nats(settings)
    try:
        await ensure_event_stream(nc, settings)
        snapshots = JetStreamSnapshotStore(nc, settings)
        await snapshots.ensure_stream()
    except BaseException:
        await nc.close()
        raise
    return await open_event_store(settings, nc, owns_connection=True), snapshots


async def open_reader_stores(settings: Settings) -> tuple[EventStore, SnapshotStore]:
    """A reader's stores in a caller's process (FleetClient's direct reads), on one NATS connection
    owned by the event store: archive + stream and the snapshots; declares and changes no stream."""
    nc = await connect_nats(settings, name="fleet-reader")
    return await open_event_store(settings, nc, owns_connection=True), JetStreamSnapshotStore(nc, settings)


@dataclass
class ReadSide:
    """The read models and the projectors' records, sharing one Valkey connection."""

    graph: GraphReadModel
    documents: ContextDocuments
    control: ProjectionControl
    dead_letter_index: ValkeyDeadLetterIndex
    #: the versions of the graph and the documents opened, ``{"graph": g, "documents": d}``
    versions: dict[str, int]
    #: a runner's checkpoints, on the same connection; closing them closes it (a projection of the
    #: graph alone, like the rebuild's replayers, never closes the documents)
    checkpoints: ValkeyProjectionCheckpoints

    async def close(self) -> None:
        for closer in (self.graph.close, self.documents.close):
            with contextlib.suppress(Exception):
                await closer()


async def open_read_side(settings: Settings, version: int | None = None, *, read: bool = False) -> ReadSide:
    """The graph, the context documents, the control records and the dead-letter index; ``version``:
    of both read models (blue/green, docs/projections.md); by default each read model's version the
    live projectors write (1 until ``projections promote``), with ``read`` the version readers read."""
    client = await connect_valkey(settings)
    try:
        versions = (
            await read_model_versions(client, settings.stream_name, written=not read)
            if version is None
            else {"graph": version, "documents": version}
        )
        graph = await GraphStore.connect(settings, database=graph_database(settings, versions["graph"]))
    except BaseException:
        await client.aclose()
        raise
    return ReadSide(
        graph=graph,
        documents=ContextCache(client, space=space_of(versions["documents"])),
        control=ValkeyProjectionControl(client, settings.stream_name),
        dead_letter_index=ValkeyDeadLetterIndex(client, settings),
        versions=versions,
        checkpoints=ValkeyProjectionCheckpoints(client, settings.stream_name, owns_client=True),
    )


def dead_letters(nc: Client, read_side: ReadSide, settings: Settings) -> DeadLetters:
    return DeadLetters(DeadLetterStream(nc, settings), read_side.dead_letter_index)


async def open_dead_letters(
    settings: Settings, nc: Client, projection: str = ""
) -> tuple[DeadLetters, ValkeyDeadLetterIndex]:
    """The dead letters for operator tools (of a user projection, ``{name}-v{version}``, if given);
    close the returned index when done."""
    index = await ValkeyDeadLetterIndex.connect(settings, projection)
    return DeadLetters(DeadLetterStream(nc, settings), index), index


async def open_dead_letter_index(settings: Settings) -> ValkeyDeadLetterIndex:
    """Which stories are held for a parked event (operator tools); close it when done."""
    return await ValkeyDeadLetterIndex.connect(settings)


async def open_projection_control(settings: Settings) -> ProjectionControl:
    return await ValkeyProjectionControl.connect(settings)


async def open_projector(
    settings: Settings,
    index: int,
    count: int,
    policy: ProjectorPolicy = DEFAULT_POLICY,
    start_sequence: int | None = None,
) -> ProjectionRunner:
    """A live projector ``index`` of ``count``: the built-in read models (the graph and the context
    documents, version 1) on the projection runner, connected and consuming; its consumers
    (``projector-partition-{p}``) start, if they do not exist yet, at ``start_sequence`` (or the
    beginning of the log)."""

    def live(store: EventStore, read_side: ReadSide) -> Projection:
        return ReadModelsProjection(graph=read_side.graph, documents=read_side.documents, store=store)

    names = RunnerNames(
        id=f"{LIVE_CONSUMERS}-v1", consumer_prefix=LIVE_CONSUMERS, worker=consumer_name(index, count), parked_as="",
        registered=False,
    )  # fmt: skip
    return await _open_runner(settings, live, index, count, policy, names, control=True, start_sequence=start_sequence)


async def open_replayer(settings: Settings, job_id: str, index: int, count: int) -> Replayer:
    """One of a rebuild's replayers: the live graph from consumers of its own (bound when it replays)."""

    def graph(store: EventStore, read_side: ReadSide) -> Projection:
        # Every replayed story's state stays in memory until the job ends (no documents to read it from).
        return GraphProjection(read_side.graph, store, version=1, state_cache=sys.maxsize)

    replayer = await _open_runner(
        settings, graph, index, count, REPLAY_POLICY, None, kind=functools.partial(Replayer, job_id=job_id),
        start=False,
    )  # fmt: skip
    assert isinstance(replayer, Replayer)
    if isinstance(replayer.store, ArchivedEventStore):
        try:
            await replayer.use_archive(replayer.store.archive)
        except BaseException:
            await replayer.close()
            raise
    return replayer


async def _open_runner(
    settings: Settings,
    projection: Callable[[EventStore, ReadSide], Projection],
    index: int,
    count: int,
    policy: ProjectorPolicy,
    names: RunnerNames | None,
    *,
    kind: Callable[..., ProjectionRunner] = ProjectionRunner,
    control: bool = False,
    start: bool = True,
    start_sequence: int | None = None,
) -> ProjectionRunner:
    """A runner of the built-in read models (``projection`` made from the connections), with the
    built-in dead letters and, with ``control``, the rebuilds' pause and the status rows."""
    nc = await connect_nats(settings, name=f"fleet-{names.worker if names else f'rebuild-{index}-of-{count}'}")
    try:
        # With an archive, healing a story reads past the retention horizon.
        store = await open_event_store(settings, nc)
        await ensure_event_stream(nc, settings)
        read_side = await open_read_side(settings)
    except BaseException:
        await nc.close()
        raise
    try:
        runner = kind(
            projection(store, read_side),
            settings, index, count, feeds=JetStreamFeeds(nc, settings), store=store,
            checkpoints=read_side.checkpoints,
            dead_letters=dead_letters(nc, read_side, settings), policy=policy,
            **({"names": names} if names else {}), control=read_side.control if control else None,
            start_sequence=start_sequence,
        )  # fmt: skip
    except BaseException:
        await read_side.close()
        await nc.close()
        raise
    if control:
        runner.progress.targets = dict(read_side.versions)
    try:
        await (runner.start() if start else runner.dead_letters.ensure_stream())
    except BaseException:
        await runner.close()
        raise
    return runner


async def open_read_model_versions(settings: Settings) -> ReadModelVersions:
    """The versions of the built-in read models the live projectors write."""
    return ReadModelVersions(await connect_valkey(settings), settings.stream_name)


async def open_projection_checkpoints(settings: Settings) -> ProjectionCheckpoints:
    """User projections' checkpoints, registrations and progress (``projections/api.py``)."""
    return await ValkeyProjectionCheckpoints.connect(settings)


async def open_documents_projection(settings: Settings, version: int = 2) -> ContextDocumentsProjection:
    """Version ``version`` of the context documents as a projection, in key space ``v{version}``."""
    return ContextDocumentsProjection(await ContextCache.connect(settings, space=space_of(version)), version)


def documents_projection_v2() -> ContextDocumentsProjection:
    """For ``fleet-actors projections run fleet_actors.composition:documents_projection_v2`` (FLEET_* settings)."""
    # a client that connects on first use: this factory runs without an event loop
    return ContextDocumentsProjection(ContextCache(valkey_client(Settings.from_env()), space=space_of(2)), 2)


async def open_graph_projection(settings: Settings, version: int = 2) -> GraphProjection:
    """Version ``version`` of the graph as a projection, in a database of its own
    (``{FLEET_NEO4J_DATABASE}-v{version}``, created if missing); GraphBlueGreenUnsupported where the
    server has one database (Neo4j Community: rebuild in place with ``fleet-actors rebuild``)."""
    database = graph_database(settings, version)
    await GraphDatabases(settings).create(database)
    graph = await GraphStore.connect(settings, database=database)
    try:
        store = await open_event_store(settings, update_stream=False)
    except BaseException:
        await graph.close()
        raise
    return GraphProjection(graph, store, version)


async def open_read_model_version(settings: Settings, read_model: str, version: int) -> Projection:
    """Version ``version`` (2 or more) of a built-in read model, ``documents`` or ``graph``, as a
    projection on its own target (created if missing): blue/green, docs/projections.md section 8."""
    openers = {"documents": open_documents_projection, "graph": open_graph_projection}
    if read_model not in openers:
        raise ConfigurationError(f"no blue/green for {read_model!r}: one of {sorted(openers)}", field="read_model")
    if version < 2:
        raise ConfigurationError("version 1 is the live read model the projectors write", field="version")
    return await openers[read_model](settings, version)


async def open_projection_runner(
    settings: Settings,
    projection: Projection,
    index: int = 0,
    count: int = 1,
    policy: ProjectorPolicy = DEFAULT_POLICY,
    *,
    start: bool = True,
) -> ProjectionRunner:
    """A user projection's runner ``index`` of ``count``: registered, caught up from the archive (with
    FLEET_ARCHIVE_URL) and bound to its live consumers (unless ``start`` is false); ``run(stop)`` it."""
    nc = await connect_nats(settings, name=f"fleet-proj-{projection_id(projection)}-{index}-of-{count}")
    try:
        store = await open_event_store(settings, nc)
        await ensure_event_stream(nc, settings)
        client = await connect_valkey(settings)
    except BaseException:
        await nc.close()
        raise
    # One Valkey connection, owned (and closed) by the checkpoints.
    checkpoints = ValkeyProjectionCheckpoints(client, settings.stream_name, owns_client=True)
    index_client = ValkeyDeadLetterIndex(client, settings, projection=projection_id(projection))
    archive = ArchiveRows(store.archive) if isinstance(store, ArchivedEventStore) else None
    runner = ProjectionRunner(
        projection, settings, index, count, feeds=JetStreamFeeds(nc, settings), store=store, checkpoints=checkpoints,
        dead_letters=DeadLetters(DeadLetterStream(nc, settings), index_client), archive=archive, policy=policy,
    )  # fmt: skip
    if start:
        try:
            await runner.start()
        except BaseException:
            await runner.close()
            raise
    return runner


async def open_read_models(settings: Settings) -> ReadModels:
    """Queries over the context documents and the graph, each the version readers are switched to
    (blue/green: ActiveDocuments, ActiveGraph; version 1, the live ones, until a switch)."""
    cache = await ActiveDocuments.connect(settings)
    graph = ActiveGraph(
        ActiveVersion(cache.pointer.client, settings.stream_name, "graph"),  # closed with the documents
        lambda version: GraphStore.connect(settings, database=graph_database(settings, version)),
    )
    try:
        await graph.graph()  # connected now: a reader fails at once when the graph is down
    except BaseException:
        await cache.close()
        raise
    return ReadModels(cache, graph)


async def open_gateway_stores(settings: Settings) -> tuple[ReadModels, JetStreamEventStore, BundleStore]:
    """What the gRPC gateway reads: the read models, the stream (history heads, WatchStory) and the
    rehydration bundles. Ray must already be joined for the story actors."""
    read_models = await open_read_models(settings)
    try:
        events = await JetStreamEventStore.connect(settings, update_stream=False)
    except BaseException:
        await read_models.close()
        raise
    return read_models, events, await BundleStore.connect(settings)


async def open_archiver(settings: Settings, *, segment_events: int = SEGMENT_EVENTS) -> Archiver:
    """The archiver of FLEET_ARCHIVE_URL on a connection of its own (closed with it)."""
    nc = await connect_nats(settings, name="fleet-archiver")
    try:
        return await archiver_on(
            settings, nc, Archive(settings.archive_url, settings.stream_name), segment_events=segment_events
        )
    except BaseException:
        await nc.close()
        raise


async def archiver_on(
    settings: Settings, nc: Client, archive: Archive, *, segment_events: int = SEGMENT_EVENTS
) -> Archiver:
    """An archiver on a connection at hand (``close()`` closes it)."""
    stream = JetStreamEventStore(nc, settings)
    snapshots = JetStreamSnapshotStore(nc, settings)
    await snapshots.ensure_stream()
    return Archiver(
        settings,
        StreamRetention(nc, settings),
        stream,
        ArchivedEventStore(stream, archive, settings),
        snapshots,
        archive,
        segment_events=segment_events,
    )


async def export_events(
    settings: Settings,
    out: str,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> ExportReport:
    """Export the events since ``since`` (the archive's first, then the stream's) to one Parquet file."""
    check_since(since)
    archive = Archive(settings.archive_url, settings.stream_name) if settings.archive_url else None
    retention = StreamRetention(await connect_nats(settings, name="fleet-export"), settings)
    try:
        return await export_stream(retention, archive, settings.stream_name, out, since=since, progress=progress)
    finally:
        await retention.close()
