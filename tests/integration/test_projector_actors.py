"""Projector actors on Ray: killed mid-stream they restart and resume; read-your-writes via the client."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
import ray
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fleet_actors import FleetClient, ProjectionTimeout, StoryNotFound
from fleet_actors.actors.projector_actor import projector_actor_name, start_projectors, stop_projectors
from fleet_actors.adapters.jetstream import ensure_event_stream
from fleet_actors.jobs.verify import verify
from fleet_actors.loadgen.seed import seed
from fleet_actors.projections.verify import actual_graph


@pytest.fixture
def pool_settings(stream_settings, ray_runtime):
    settings = stream_settings.replace(ray_namespace=f"pool-{stream_settings.stream_name.lower()}")
    yield settings
    stop_projectors(settings)


async def test_killed_projector_actor_restarts_and_resumes(pool_settings, event_store):
    await seed(pool_settings, 30, 40, prefix="kp")  # 1,200 events to project
    await asyncio.to_thread(start_projectors, pool_settings)
    victim = ray.get_actor(projector_actor_name(0, 2), namespace=pool_settings.ray_namespace)
    ray.kill(victim, no_restart=False)  # mid-stream: Ray restarts it (max_restarts=-1)
    deadline = time.monotonic() + 90
    while not (report := await verify(pool_settings)).ok:
        assert time.monotonic() < deadline, report.differences[:5]
        await asyncio.sleep(1)
    assert len(report.stories) == 30
    graph = await actual_graph_for(pool_settings, "kp-0000003")
    assert sum(graph["story"].values()) == 1  # one Story node: nothing applied twice


async def actual_graph_for(settings, story_id):
    from fleet_actors.adapters.neo4j import GraphStore

    graph = await GraphStore.connect(settings)
    try:
        return await actual_graph(graph, story_id)
    finally:
        await graph.close()


async def test_a_projection_hosted_in_projector_actors_catches_up_and_survives_a_kill(pool_settings, event_store):
    """`projections deploy documents 2 --ray`: version 2 of the documents in two detached projector
    actors; one killed mid-catch-up is restarted by Ray and the version ends equal to a replay."""
    from fleet_actors.actors.projector_actor import HostedProjection, host_projection, hosted_actor_name, stop_hosted
    from fleet_actors.composition import open_documents_projection
    from fleet_actors.jobs.projection_extensions import drop_version, projection_rows
    from fleet_actors.projections.runner import verify_projection

    await seed(pool_settings, 12, 40, prefix="hp")
    hosted = HostedProjection(read_model="documents", version=2)
    await asyncio.to_thread(host_projection, pool_settings, hosted, "context-documents-v2", 2)
    documents = await open_documents_projection(pool_settings, 2)
    try:
        ray.kill(ray.get_actor(hosted_actor_name("context-documents-v2", 1, 2), namespace=pool_settings.ray_namespace),
                 no_restart=False)  # fmt: skip
        stories = await event_store.story_ids()
        heads = {s: (await event_store.read_all(s))[-1].envelope.version for s in stories}
        deadline = time.monotonic() + 90
        while await documents.applied_versions(stories) != heads:
            assert time.monotonic() < deadline, "version 2 did not catch up"
            await asyncio.sleep(0.5)
        assert await verify_projection(documents, event_store, stories) == {}
        rows = [r for r in await projection_rows(pool_settings) if r.projection == "context-documents-v2"]
        assert sorted(r.worker for r in rows) == [f"proj-context-documents-v2-{i}-of-2" for i in (0, 1)]
    finally:
        stopped = await asyncio.to_thread(stop_hosted, pool_settings, "context-documents-v2")
        await documents.close()
    assert len(stopped) == 2
    await drop_version(pool_settings, "documents", 2)


async def test_read_your_writes_through_the_client(pool_settings, event_store, unique_id):
    await asyncio.to_thread(start_projectors, pool_settings)
    client = FleetClient(pool_settings).aio
    story_id = unique_id("RYW")
    await client.create_story(story_id, "read your writes")
    result = await client.add_decision(story_id, "JWT", "stateless", alternatives="sessions: stateful")
    view = await client.wait_for_projection(story_id, result.version, timeout=30)
    assert view.consistent_version >= result.version
    assert view.state.decisions[result.decision_id].alternatives[0].title == "sessions"
    assert (await client.get_context(story_id)).version == result.version
    with pytest.raises(ProjectionTimeout):
        await client.wait_for_projection(story_id, result.version + 5, timeout=0.5)
    with pytest.raises(StoryNotFound):
        await client.get_context(unique_id("missing"))


async def test_resizing_the_pool_keeps_the_consumers_and_stops_the_old_actors(pool_settings, event_store, unique_id):
    await seed(pool_settings, 10, 10, prefix="rs")
    nc = await nats.connect(pool_settings.nats_url)
    try:
        # An orphan of the earlier naming (one consumer per projector, one filter per partition).
        await ensure_event_stream(nc, pool_settings)
        filters = [pool_settings.partition_filter(p) for p in range(pool_settings.partitions)]
        await nc.jsm().add_consumer(pool_settings.stream_name, ConsumerConfig(
            durable_name="projector-0-of-1", filter_subjects=filters, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=41,
        ))  # fmt: skip
        one = pool_settings.replace(projectors=1)
        await asyncio.to_thread(start_projectors, one)
        consumers = {c.name: c for c in await nc.jsm().consumers_info(pool_settings.stream_name)}
        assert "projector-0-of-1" not in consumers  # deleted, and its position taken over
        partitions = {f"projector-partition-{p}" for p in range(pool_settings.partitions)}
        assert set(consumers) == partitions
        assert {c.config.opt_start_seq for c in consumers.values()} == {41}

        await asyncio.to_thread(start_projectors, pool_settings)  # two projectors now
        named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == pool_settings.ray_namespace}  # fmt: skip
        assert projector_actor_name(0, 1) not in named
        assert {projector_actor_name(0, 2), projector_actor_name(1, 2)} <= named
        assert {c.name for c in await nc.jsm().consumers_info(pool_settings.stream_name)} == partitions
        client = FleetClient(pool_settings).aio
        story_id = unique_id("RS")
        result = await client.create_story(story_id, "after the resize")
        assert (await client.wait_for_projection(story_id, result.version, timeout=30)).consistent_version == 1
    finally:
        await nc.close()


def test_demo_on_a_running_cluster_leaves_its_projector_pool_running(pool_settings, event_store):
    """Issue #21 (1): the demo stopped the cluster's projectors; a tool stops only what it started."""
    from fleet_actors.actors.projector_actor import running_projectors
    from fleet_actors.demo import run_demo

    start_projectors(pool_settings)
    before = running_projectors(pool_settings)
    assert len(before) == pool_settings.projectors
    assert run_demo(pool_settings) == 0
    assert ray.is_initialized()  # the demo leaves a Ray connection it did not make
    assert running_projectors(pool_settings) == before
    handles = [ray.get_actor(name, namespace=pool_settings.ray_namespace) for name in before]
    assert all(status["ready"] for status in ray.get([h.status.remote() for h in handles], timeout=30))


def test_story_at_a_version_beyond_the_story_is_refused(pool_settings, event_store, unique_id, monkeypatch, capsys):
    """Issue #21 (6): `story at --version 999` on a story at version 1 answered version 1."""
    from fleet_actors.cli import story_cmd
    from fleet_actors.cli.main import main

    story_id = unique_id("AT")
    FleetClient(pool_settings).create_story(story_id, "at a version")
    monkeypatch.setattr(story_cmd, "settings_from", lambda args: pool_settings)
    assert main(["story", "at", story_id, "--version", "1"]) == 0
    assert main(["story", "at", story_id, "--version", "999"]) == 2
    assert "is at version 1; --version 999 is beyond it" in capsys.readouterr().err
