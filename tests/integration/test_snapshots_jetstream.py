"""Snapshots on JetStream: history per story, lookup by version and time, corrupt ones passed over,
and their (:ContextSnapshot) nodes in the graph."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from fleet_actors.actors.story_actor import StoryHost
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore, snapshot_stream, snapshot_subject
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.commands import CreateStory, RecordSummary
from fleet_actors.errors import BackendUnavailable
from fleet_actors.projections.policy import LIVE_CONSUMERS, snapshot_consumer_name
from tests.integration.conftest import RunningProjectors, wait_until

T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
async def snapshots(event_store, stream_settings):
    store = JetStreamSnapshotStore(event_store.connection, stream_settings.replace(snapshot_keep=3))
    await store.ensure_stream()
    return store


def runtime(event_store, snapshots, story_id, every):
    ticks = itertools.count()
    return StoryRuntime(
        story_id,
        event_store,
        clock=lambda: T0 + timedelta(seconds=next(ticks)),
        snapshots=snapshots,
        snapshot_every=every,
    )


async def write(story, count):
    await story.execute(CommandRequest(story.story_id, CreateStory("t"), "create"))
    for i in range(count - 1):
        await story.execute(CommandRequest(story.story_id, RecordSummary(f"s{i}"), f"c{i}"))


async def test_history_per_story_found_by_version_and_time(event_store, snapshots, unique_id):
    sid = unique_id("S")
    writer = runtime(event_store, snapshots, sid, every=5)
    await write(writer, 23)
    refs = await snapshots.refs(sid)
    assert [r.version for r in refs] == [10, 15, 20]  # the stream keeps the last 3 per story
    assert (await snapshots.latest(sid, max_version=17)).version == 15
    assert (await snapshots.latest(sid, at=T0 + timedelta(seconds=14))).version == 15  # v15 is stamped at +14 s
    assert (await snapshots.latest(sid, at=T0 + timedelta(seconds=13))).version == 10
    assert await snapshots.latest(sid, max_version=9) is None
    reader = runtime(event_store, snapshots, sid, every=5)
    await reader.load()
    assert reader.state == writer.state and reader.replayed_on_load == 3


async def test_corrupt_snapshot_is_passed_over(event_store, snapshots, stream_settings, unique_id):
    sid = unique_id("S")
    writer = runtime(event_store, snapshots, sid, every=4)
    await write(writer, 9)
    await event_store.connection.jetstream().publish(
        snapshot_subject(stream_settings, sid), b"garbage", headers={"Fleet-Version": "9", "Fleet-At": ""}
    )
    reader = runtime(event_store, snapshots, sid, every=4)
    await reader.load()
    assert reader.state == writer.state and reader.replayed_on_load == 1  # from the v8 snapshot


async def test_snapshots_become_graph_nodes(execute, event_store, stream_settings, unique_id):
    settings = stream_settings.replace(snapshot_every=3)
    snapshots = JetStreamSnapshotStore(event_store.connection, settings)
    await snapshots.ensure_stream()
    sid = unique_id("S")
    await write(runtime(event_store, snapshots, sid, every=3), 7)
    running = await RunningProjectors(settings, 1).start()
    try:

        async def nodes():
            rows = await running.graph.query(
                "MATCH (:Story {story_id: $id})-[:HAS_SNAPSHOT]->(c:ContextSnapshot) RETURN c.version AS v", id=sid
            )
            return sorted(r["v"] for r in rows) == [3, 6]

        await wait_until(nodes)
    finally:
        await running.stop()


async def test_a_deleted_snapshot_consumer_is_re_created_by_the_projectors(
    execute, event_store, stream_settings, unique_id
):
    settings = stream_settings.replace(snapshot_every=3)
    snapshots = JetStreamSnapshotStore(event_store.connection, settings)
    await snapshots.ensure_stream()
    sid = unique_id("S")
    writer = runtime(event_store, snapshots, sid, every=3)
    await write(writer, 4)
    running = await RunningProjectors(settings, 1).start()
    try:

        async def nodes(expected):
            rows = await running.graph.query(
                "MATCH (:Story {story_id: $id})-[:HAS_SNAPSHOT]->(c:ContextSnapshot) RETURN c.version AS v", id=sid
            )
            return sorted(r["v"] for r in rows) == expected

        await wait_until(lambda: nodes([3]))
        await event_store.connection.jsm().delete_consumer(
            snapshot_stream(settings), snapshot_consumer_name(LIVE_CONSUMERS)
        )
        for i in range(3):
            await writer.execute(CommandRequest(sid, RecordSummary(f"later {i}"), f"later-{i}"))
        await wait_until(lambda: nodes([3, 6]))
    finally:
        await running.stop()


async def test_an_activation_that_fails_half_way_is_tried_again_whole(
    ray_runtime, event_store, stream_settings, unique_id, monkeypatch
):
    # Snapshot stream unavailable on the first activation: the next call must open both stores again,
    # not carry on with the event store alone (which left the actor without snapshots for good).
    hiccups = [BackendUnavailable("JetStream hiccup")]
    ensure_stream = JetStreamSnapshotStore.ensure_stream

    async def flaky(self):
        if hiccups:
            raise hiccups.pop()
        await ensure_stream(self)

    monkeypatch.setattr(JetStreamSnapshotStore, "ensure_stream", flaky)
    settings = stream_settings.replace(snapshot_every=2)
    story_id = unique_id("H")
    host = StoryHost(story_id, settings)
    with pytest.raises(BackendUnavailable):
        await host.execute(CommandRequest(story_id, CreateStory("t"), "create"))
    await host.execute(CommandRequest(story_id, CreateStory("t"), "create"))
    await host.execute(CommandRequest(story_id, RecordSummary("s"), "summary"))
    await host.close()
    snapshot = await JetStreamSnapshotStore(event_store.connection, settings).latest(story_id)
    assert snapshot is not None and snapshot.state.version == 2
