"""Graph blue/green on the real stack (ArcadeDB): version 2 of the graph catches up from the first
event in a database of its own while readers keep reading version 1; `projections switch graph 2`
verifies it against a replay and moves every reader at once; readers can be switched back, and
version 2 dropped once nobody reads it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.neo4j.graph_databases import GraphDatabases, graph_database
from fleet_actors.composition import open_graph_projection, open_projection_control, open_read_models
from fleet_actors.domain.commands import UpdateSubtask
from fleet_actors.errors import ConfigurationError, GraphBlueGreenUnsupported
from fleet_actors.jobs.projection_extensions import (
    active_version,
    drop_version,
    projection_rows,
    switch_readers,
    switch_when_ready,
)
from fleet_actors.jobs.verify import verify
from fleet_actors.projections.runner import verify_projection
from fleet_actors.settings import Settings
from tests.integration.conftest import RunningProjectors, wait_until, write_story
from tests.integration.test_snapshots_jetstream import runtime, write
from tests.integration.test_user_projections import running


@pytest.fixture
async def graph_settings(stream_settings: Settings):
    """The test's stream with a live graph database of its own (and its version 2 beside it)."""
    settings = stream_settings.replace(neo4j_database=f"g{stream_settings.stream_name.lower()}")
    admin = GraphDatabases(settings.replace(neo4j_database="neo4j"))
    await admin.create(settings.neo4j_database)
    yield settings
    for version in (2, 1):
        with contextlib.suppress(Exception):
            await admin.drop(graph_database(settings, version))


async def test_readers_stay_on_the_old_graph_until_the_switch(graph_settings: Settings, execute, unique_id):
    settings = graph_settings
    stories = [unique_id("GB") for _ in range(3)]
    heads = {s: await write_story(execute, s) for s in stories}
    live = await RunningProjectors(settings, 1).start()
    read_models = await open_read_models(settings)
    try:

        async def served() -> dict[str, int]:
            return await read_models.graph.applied_versions(stories)

        await wait_until(lambda: _equal(live.graph.applied_versions(stories), heads))
        graph = await open_graph_projection(settings, 2)  # creates database {live}-v2, empty
        with pytest.raises(ConfigurationError, match="not running live"):
            await switch_readers(settings, "graph", 2)
        assert await served() == heads  # readers are on version 1, not on the empty version 2

        async with running(settings, graph):
            await wait_until(lambda: _equal(graph.applied_versions(stories), heads), timeout=60)
            # Version 1 stops moving; version 2 goes on: what readers see tells which one they read.
            await live.stop()
            old = dict(heads)
            for story in stories:
                heads[story] = (await execute(story, UpdateSubtask("T1", "BLOCKED"))).version
            await wait_until(lambda: _equal(graph.applied_versions(stories), heads))
            await asyncio.sleep(0.6)  # past a reader's cache of the active version
            assert await served() == old, "readers left the old graph before the switch"

            # The switch policy: as soon as version 2 is live, caught up, and verifies against a replay.
            assert await switch_when_ready(settings, "graph", 2, wait=30, every=0.5) == []
            assert await active_version(settings, "graph") == 2
            await asyncio.sleep(0.6)
            assert await served() == heads, "readers did not move to version 2 at the switch"
            node, _ = await read_models.graph.neighbourhood("story", stories[0], 1, 10)
            assert node is not None and node["version"] == heads[stories[0]]

            with pytest.raises(ConfigurationError, match="switch them first"):
                await drop_version(settings, "graph", 2)
            store = await JetStreamEventStore.connect(settings)
            try:
                assert await verify_projection(graph, store, stories) == {}
            finally:
                await store.close()
            # `fleet-actors verify --version 2 --graph-only`: with the whole database's census
            assert (await verify(settings, documents=False, census=True, version=2)).ok

            # Switch back: version 1 catches up when its projectors run again, and readers follow.
            live = await RunningProjectors(settings, 1).start()
            await wait_until(lambda: _equal(live.graph.applied_versions(stories), heads))
            assert await switch_readers(settings, "graph", 1) == []
            await asyncio.sleep(0.6)
            assert await served() == heads
            assert (await verify(settings, stories)).ok

        await drop_version(settings, "graph", 2)
        assert graph_database(settings, 2) not in await GraphDatabases(settings)._arcadedb("list databases")
        assert not [r for r in await projection_rows(settings) if r.projection == "graph-v2"]
    finally:
        await read_models.close()
        await live.stop()


async def _equal(versions, heads: dict[str, int]) -> bool:
    return await versions == heads


async def test_without_a_second_database_it_says_so(settings: Settings, monkeypatch):
    """Neo4j Community (one user database): graph blue/green is refused with the way out."""

    async def community(self) -> str:
        return "neo4j-community"

    monkeypatch.setattr(GraphDatabases, "server_kind", community)
    with pytest.raises(GraphBlueGreenUnsupported, match="fleet-actors rebuild"):
        await open_graph_projection(settings, 2)
    monkeypatch.undo()
    # ArcadeDB creates databases over HTTP only: without its URL, the same refusal
    with pytest.raises(GraphBlueGreenUnsupported, match="FLEET_NEO4J_HTTP_URL"):
        await GraphDatabases(settings.replace(neo4j_http_url="")).create("neo4j-v9")


async def test_a_documents_version_is_dropped_once_nobody_reads_it(stream_settings: Settings, execute, unique_id):
    """The same commands for the documents: deploy (here in-process), switch, refuse to drop the
    version readers read, switch back, drop its key space and records."""
    from fleet_actors.adapters.valkey import ContextCache
    from fleet_actors.composition import open_documents_projection

    settings = stream_settings
    stories = [unique_id("DD") for _ in range(2)]
    heads = {s: await write_story(execute, s) for s in stories}
    documents = await open_documents_projection(settings, 3)
    try:
        async with running(settings, documents):
            await wait_until(lambda: _equal(documents.applied_versions(stories), heads), timeout=60)

            async def switched() -> bool:
                rows = [r for r in await projection_rows(settings) if r.projection == "context-documents-v3"]
                return bool(rows) and rows[0].phase == "live" and await switch_readers(settings, "documents", 3) == []

            await wait_until(switched, timeout=30)
            with pytest.raises(ConfigurationError, match="switch them first"):
                await drop_version(settings, "documents", 3)
            assert await switch_readers(settings, "documents", 1) == []
        await drop_version(settings, "documents", 3)
    finally:
        await switch_readers(settings, "documents", 1)
    left = await ContextCache.connect(settings, space="v3")
    try:
        assert await left.get_many(stories) == dict.fromkeys(stories)
    finally:
        await left.close()
    assert not [r for r in await projection_rows(settings) if r.projection == "context-documents-v3"]


async def test_version_2_of_the_graph_shows_the_snapshots_too(graph_settings: Settings, event_store, unique_id):
    """Snapshot nodes come from a snapshot consumer of the version's own (``proj-graph-v2-snapshots``)."""
    settings = graph_settings.replace(snapshot_every=3)
    snapshots = JetStreamSnapshotStore(event_store.connection, settings)
    await snapshots.ensure_stream()
    sid = unique_id("GS")
    await write(runtime(event_store, snapshots, sid, every=3), 7)
    graph = await open_graph_projection(settings, 2)

    async def nodes() -> bool:
        rows = await graph.graph.query(  # type: ignore[attr-defined]
            "MATCH (:Story {story_id: $id})-[:HAS_SNAPSHOT]->(c:ContextSnapshot) RETURN c.version AS v", id=sid
        )
        return sorted(r["v"] for r in rows) == [3, 6]

    try:
        async with running(settings, graph):
            await wait_until(nodes, timeout=30)
    finally:
        await drop_version(settings, "graph", 2)


async def test_a_promoted_version_is_written_by_the_live_projectors_and_version_1_can_go(
    graph_settings: Settings, execute, unique_id
):
    """After the switch: `projections promote graph 2` hands version 2 to the live projectors (they
    reopen on it; their consumers stay), its own runner stops, and version 1, which nobody reads or
    writes any more, is dropped; readers can no longer be switched back to it."""
    from fleet_actors.jobs.projection_extensions import promote_version, written_version

    settings = graph_settings
    stories = [unique_id("GP") for _ in range(2)]
    heads = {s: await write_story(execute, s) for s in stories}
    live = await RunningProjectors(settings, 1).start()
    try:
        await wait_until(lambda: _equal(live.graph.applied_versions(stories), heads))
        graph = await open_graph_projection(settings, 2)
        async with running(settings, graph):
            await wait_until(lambda: _equal(graph.applied_versions(stories), heads), timeout=60)
            with pytest.raises(ConfigurationError, match="switch them first"):
                await promote_version(settings, "graph", 2)
            assert await switch_when_ready(settings, "graph", 2, wait=30, every=0.5) == []
            control = await open_projection_control(settings)
            try:  # a rebuild in progress replays into version 1: no promotion under its feet
                await control.pause("rebuild-in-progress")
                with pytest.raises(ConfigurationError, match="rebuild rebuild-in-progress is rebuilding"):
                    await promote_version(settings, "graph", 2)
            finally:
                await control.resume()
                await control.close()
            assert await written_version(settings, "graph") == 1
            await promote_version(settings, "graph", 2)
        assert await written_version(settings, "graph") == 2
        with pytest.raises(ConfigurationError, match="still write version 1"):
            await drop_version(settings, "graph", 1)  # the running projector has not reopened yet
        await live.stop()
        live = await RunningProjectors(settings, 1).start()  # a projector actor reopens by itself
        assert live.projectors[0].progress.targets == {"graph": 2, "documents": 1}
        for story in stories:  # version 2's own runner is gone: the projectors keep it current
            heads[story] = (await execute(story, UpdateSubtask("T1", "BLOCKED"))).version
        check = await GraphStore.connect(settings, database=graph_database(settings, 2))
        try:
            await wait_until(lambda: _equal(check.applied_versions(stories), heads))
        finally:
            await check.close()
        await wait_until(lambda: asyncio.sleep(1.2, True))  # a heartbeat that says what it writes now
        await drop_version(settings, "graph", 1)
        assert settings.neo4j_database not in await GraphDatabases(settings)._arcadedb("list databases")
        with pytest.raises(ConfigurationError, match="was dropped"):
            await switch_readers(settings, "graph", 1)
        assert (await verify(settings, stories)).ok  # the versions readers read: graph v2, documents v1
    finally:
        await live.stop()
