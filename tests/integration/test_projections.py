"""Projectors against real NATS, ArcadeDB (Bolt) and Valkey: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest
import valkey.asyncio

from fleet_actors.adapters.jetstream.dead_letter_stream import dlq_stream
from fleet_actors.adapters.jetstream.partition_feed import partition_of
from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.valkey import ContextCache
from fleet_actors.adapters.valkey.keys import context_key
from fleet_actors.codec.state import state_to_json
from fleet_actors.domain.commands import UpdateSubtask
from fleet_actors.jobs.status import projection_status
from fleet_actors.jobs.verify import verify
from fleet_actors.projections.dead_letters import DeadLetters
from fleet_actors.projections.verify import actual_graph
from tests.integration.conftest import RunningProjectors, wait_until, write_story


async def projected(running: RunningProjectors, versions: dict[str, int]) -> bool:
    graph = await running.graph.applied_versions(list(versions))
    documents = await running.cache.get_many(list(versions))
    return all(graph[s] == v and documents[s] is not None and documents[s].version == v for s, v in versions.items())


async def test_graph_and_document_follow_the_log(projectors, execute, stream_settings, unique_id):
    stories = {sid: await write_story(execute, sid) for sid in (unique_id("S") for _ in range(4))}
    await wait_until(lambda: projected(projectors, stories))
    report = await verify(stream_settings)
    assert report.ok, report.differences
    assert sorted(s.story_id for s in report.stories) == sorted(stories)
    graph = await actual_graph(projectors.graph, next(iter(stories)))
    assert sum(graph["subtasks"].values()) == 2 and sum(graph["decision_relations"].values()) == 1
    assert sum(graph["milestones"].values()) == 1 and sum(graph["transitions"].values()) == 1
    # Processed event ids and per-partition consumer offsets land with the documents.
    stored = await projectors.projectors[0].store.read_all(next(iter(stories)))
    assert await projectors.cache.already_processed([e.envelope.event_id for e in stored]) == {
        e.envelope.event_id for e in stored
    }
    nc = await nats.connect(stream_settings.nats_url)
    last = await nc.jsm().get_msg(stream_settings.stream_name, stored[-1].sequence)
    await nc.close()
    consumer = f"{stream_settings.stream_name}.projector-partition-{partition_of(last.subject)}"
    assert await projectors.cache.offset(consumer) >= stored[-1].sequence


async def test_both_projectors_share_the_work(projectors, execute, unique_id):
    stories = {sid: await write_story(execute, sid) for sid in (unique_id("S") for _ in range(12))}
    await wait_until(lambda: projected(projectors, stories))
    assert all(p.progress.applied > 0 for p in projectors.projectors)


async def test_redelivered_events_are_not_applied_twice(stream_settings, execute, unique_id):
    sid = unique_id("S")
    version = await write_story(execute, sid)
    first = await RunningProjectors(stream_settings, 1).start()
    await wait_until(lambda: projected(first, {sid: version}))
    before = await actual_graph(first.graph, sid)
    await first.stop()
    # Throw the consumers away: new ones receive every event again from the start.
    nc = await nats.connect(stream_settings.nats_url)
    for consumer in await nc.jsm().consumers_info(stream_settings.stream_name):
        if consumer.name.startswith("projector-partition-"):
            await nc.jsm().delete_consumer(stream_settings.stream_name, consumer.name)
    await nc.close()
    again = await RunningProjectors(stream_settings, 1).start()
    try:
        await wait_until(lambda: asyncio.sleep(0, again.projectors[0].progress.delivered >= version))
        await asyncio.sleep(0.5)
        assert again.projectors[0].progress.applied == 0
        assert again.projectors[0].progress.skipped_duplicates >= version
        assert await actual_graph(again.graph, sid) == before
    finally:
        await again.stop()


async def test_crash_between_graph_commit_and_ack_is_harmless(stream_settings, execute, unique_id):
    sid = unique_id("S")
    version = await write_story(execute, sid)
    crashing = await RunningProjectors(stream_settings, 1).start()

    async def crash(*args, **kwargs):
        raise RuntimeError("projector died after the graph commit")

    crashing.projectors[0].projection.documents.commit = crash  # the graph commits, then the process dies
    await wait_until(lambda: asyncio.sleep(0, crashing.projectors[0].progress.batches > 0))
    await crashing.stop()
    graph = await GraphStore.connect(stream_settings)
    assert (await graph.applied_versions([sid]))[sid] == version  # the graph got it; nothing was acked
    await graph.close()
    restarted = await RunningProjectors(stream_settings, 1).start()  # redelivery after ack_wait
    try:
        await wait_until(lambda: projected(restarted, {sid: version}), timeout=30)
        report = await verify(stream_settings, [sid])
        assert report.ok, report.differences
    finally:
        await restarted.stop()


async def test_poison_event_is_parked_and_holds_only_its_story(projectors, execute, stream_settings, unique_id):
    poisoned, healthy = unique_id("P"), unique_id("H")
    await write_story(execute, poisoned)
    nc = await nats.connect(stream_settings.nats_url)
    try:
        # Bytes no version of the code can read, appended like any event of the story.
        await nc.jetstream().publish(stream_settings.story_subject(poisoned, "summary_recorded"), b"\xff\x00garbage")
        healthy_version = await write_story(execute, healthy)
        await wait_until(lambda: projected(projectors, {healthy: healthy_version}))
        dead_letters = projectors.dead_letters
        await wait_until(lambda: _held(dead_letters, poisoned))
        parked = (await dead_letters.held())[poisoned]
        assert parked.deliveries >= 2 and "ContextEvent" in parked.error
        info = await nc.jsm().stream_info(dlq_stream(stream_settings))
        assert info.state.messages >= 1
        assert (await projectors.graph.applied_versions([poisoned]))[poisoned] == 10  # before the poison
        # The operator skips it: the story catches up past it, in order.
        # Issue #21 (7): PARKED counts the held stories of each consumer, and drops after the release
        rows = await projection_status(stream_settings)
        assert [r.parked for r in rows if r.consumer == parked.consumer] == [1]
        assert sum(r.parked for r in rows) == 1
        await dead_letters.request_release(poisoned, "skip")
        await wait_until(lambda: _released(dead_letters, poisoned))
        assert (await projectors.graph.applied_versions([poisoned]))[poisoned] == 11
        assert sum(r.parked for r in await projection_status(stream_settings)) == 0
    finally:
        await nc.close()


async def _held(dead_letters: DeadLetters, story_id: str) -> bool:
    return story_id in await dead_letters.held()


async def _released(dead_letters: DeadLetters, story_id: str) -> bool:
    return story_id not in await dead_letters.held()


async def test_nats_killed_mid_stream_loses_nothing(local_stack, projectors, execute, stream_settings, unique_id):
    stories = {sid: await write_story(execute, sid, extra_updates=20) for sid in (unique_id("K") for _ in range(3))}
    local_stack.nats.kill()
    local_stack.nats.start().wait_ready()
    await asyncio.sleep(0.5)
    more = {sid: await write_story(execute, sid) for sid in (unique_id("K") for _ in range(2))}
    await wait_until(lambda: projected(projectors, {**stories, **more}), timeout=60)
    report = await verify(stream_settings)
    assert report.ok, report.differences


@pytest.mark.parametrize("server", ["nats", "valkey"])
async def test_an_outage_while_the_projectors_are_idle_is_waited_out(
    server, local_stack, projectors, execute, stream_settings, unique_id
):
    """Idle projectors poll JetStream (the snapshot consumer's state) and Valkey (a rebuild's pause flag,
    releases from the DLQ) every second: an outage longer than a request's timeout once ended their
    loops for good."""
    before = {sid: await write_story(execute, sid) for sid in (unique_id("I") for _ in range(2))}
    await wait_until(lambda: projected(projectors, before))
    down = getattr(local_stack, server)
    down.stop()
    try:
        await asyncio.sleep(stream_settings.nats_timeout + 2 * projectors.policy.fetch_timeout)
    finally:
        down.start().wait_ready()
    after = {sid: await write_story(execute, sid) for sid in (unique_id("I") for _ in range(2))}
    await wait_until(lambda: projected(projectors, {**before, **after}), timeout=60)
    assert not any(task.done() for task in projectors.tasks)
    assert (await verify(stream_settings)).ok


async def test_a_deleted_consumer_is_re_created_by_the_projectors(projectors, execute, stream_settings, unique_id):
    """Deleted by hand, or lost with the server's state: the projectors create their consumers again
    and catch up by themselves; what they read a second time is not applied twice."""
    first = {sid: await write_story(execute, sid) for sid in (unique_id("S") for _ in range(3))}
    await wait_until(lambda: projected(projectors, first))
    applied_before = sum(p.progress.applied for p in projectors.projectors)
    nc = await nats.connect(stream_settings.nats_url)
    try:
        jsm = nc.jsm()
        partition_consumers = [
            c.name for c in await jsm.consumers_info(stream_settings.stream_name) if "-partition-" in c.name
        ]
        assert len(partition_consumers) == stream_settings.partitions
        for name in partition_consumers:
            await jsm.delete_consumer(stream_settings.stream_name, name)
        later = {sid: await write_story(execute, sid) for sid in (unique_id("S") for _ in range(3))}
        await wait_until(lambda: projected(projectors, later))
        assert sorted(
            c.name for c in await jsm.consumers_info(stream_settings.stream_name) if "-partition-" in c.name
        ) == sorted(partition_consumers)
    finally:
        await nc.close()
    assert sum(p.progress.applied for p in projectors.projectors) - applied_before == sum(later.values())
    assert await projected(projectors, first)


async def test_valkey_restart_loses_nothing(local_stack, projectors, execute, stream_settings, unique_id):
    sid = unique_id("V")
    version = await write_story(execute, sid)
    await wait_until(lambda: projected(projectors, {sid: version}))
    local_stack.valkey.restart()
    later = await execute(sid, UpdateSubtask("T1", "DONE"))
    await wait_until(lambda: projected(projectors, {sid: later.version}), timeout=30)
    assert (await verify(stream_settings, [sid])).ok


async def test_graph_outage_is_waited_out(local_stack, projectors, execute, stream_settings, unique_id):
    sid = unique_id("G")
    version = await write_story(execute, sid)
    await wait_until(lambda: projected(projectors, {sid: version}))
    local_stack.arcadedb.stop()
    try:
        versions = {unique_id("G"): 0 for _ in range(3)}
        for story_id in versions:
            versions[story_id] = await write_story(execute, story_id)
        await wait_until(lambda: asyncio.sleep(0, any(p.progress.last_error for p in projectors.projectors)))
        assert "unavailable" in " ".join(p.progress.last_error for p in projectors.projectors)
    finally:
        local_stack.arcadedb.start().wait_ready()
    await wait_until(lambda: projected(projectors, versions), timeout=60)
    report = await verify(stream_settings)
    assert report.ok, report.differences

    # Issue #21 (7): the error had a time while it lasted and is cleared on recovery; the pool is alive
    async def error_cleared() -> bool:
        rows = await projection_status(stream_settings)
        return all(not r.last_error and r.state in ("idle", "running") for r in rows)

    await wait_until(error_cleared, timeout=30)
    rows = await projection_status(stream_settings)
    assert all(r.heartbeat_age_s is not None and r.heartbeat_age_s < 10 for r in rows)
    assert all(p.progress.last_error_cleared_at for p in projectors.projectors if p.progress.last_error_at)


async def test_status_shows_a_stopped_pool_as_down_and_a_paused_one_as_paused(stream_settings, execute, unique_id):
    """Issue #21 (7): a dead or paused pool looked idle."""
    from fleet_actors.composition import open_projection_control

    stream_settings = stream_settings.replace(projectors=1)  # the pool status names: projector-0-of-1
    await write_story(execute, unique_id("S"))
    running = await RunningProjectors(stream_settings, 1).start()
    control = await open_projection_control(stream_settings)
    try:
        await wait_until(lambda: _states_are(stream_settings, {"idle"}))
        await control.pause("job-x")
        await wait_until(lambda: _states_are(stream_settings, {"paused by rebuild job-x"}))
        await control.resume()
        await wait_until(lambda: _states_are(stream_settings, {"idle"}))
        await running.stop()
        # seen 30 s later: no heartbeat since
        rows = await projection_status(stream_settings, now=time.time() + 30)
        assert {r.state.split(" for ")[0] for r in rows} == {"down (no heartbeat"}
    finally:
        await control.close()
        await running.stop()


async def _states_are(settings, states: set[str]) -> bool:
    return {r.state for r in await projection_status(settings)} == states


async def test_lost_context_documents_are_rebuilt_from_the_log(projectors, execute, stream_settings, unique_id):
    sid = unique_id("L")
    version = await write_story(execute, sid)
    await wait_until(lambda: projected(projectors, {sid: version}))
    cache = await ContextCache.connect(stream_settings)
    await cache.delete(f"context:{sid}")
    later = await execute(sid, UpdateSubtask("T1", "DONE"))
    await wait_until(lambda: projected(projectors, {sid: later.version}))
    assert (await cache.get(sid)).state.subtasks["T1"].status == "DONE"
    await cache.close()
    assert (await verify(stream_settings, [sid])).ok


async def test_json_documents_of_earlier_releases_and_unreadable_ones(projectors, execute, stream_settings, unique_id):
    legacy, broken = unique_id("J"), unique_id("B")
    versions = {sid: await write_story(execute, sid) for sid in (legacy, broken)}
    await wait_until(lambda: projected(projectors, versions))
    cache = projectors.cache
    written = (await cache.get(legacy)).state
    raw = valkey.asyncio.Valkey.from_url(stream_settings.valkey_url)
    try:
        await raw.hset(context_key(legacy), "doc", json.dumps(state_to_json(written)))
        await raw.hset(context_key(broken), "doc", b"\xff\x00 not a document")
    finally:
        await raw.aclose()
    assert (await cache.get(legacy)).state == written  # JSON documents are still read
    assert await cache.get(broken) is None  # unreadable: the projector rebuilds it from the log
    later = {sid: (await execute(sid, UpdateSubtask("T1", "DONE"))).version for sid in versions}
    await wait_until(lambda: projected(projectors, later))
    for sid in versions:
        assert (await cache.get(sid)).state.subtasks["T1"].status == "DONE"
    assert (await verify(stream_settings, list(versions))).ok


async def test_the_same_events_twice_in_one_batch_apply_once(stream_settings, execute, unique_id):
    sid = unique_id("D")
    version = await write_story(execute, sid)
    running = await RunningProjectors(stream_settings, 1).start()
    try:
        await wait_until(lambda: projected(running, {sid: version}))
        before = await actual_graph(running.graph, sid)
        events = [e.envelope for e in await running.projectors[0].store.read_all(sid)]
        failures = await running.projectors[0].project({sid: events + events})  # a redelivery inside a batch
        assert failures == {}
        assert await actual_graph(running.graph, sid) == before
    finally:
        await running.stop()


async def test_status_lists_each_partition_consumer_with_its_projector(projectors, execute, stream_settings, unique_id):
    sid = unique_id("ST")
    version = await write_story(execute, sid)
    await wait_until(lambda: projected(projectors, {sid: version}))
    await wait_until(lambda: _no_lag(stream_settings))
    rows = await projection_status(stream_settings)
    assert [r.consumer for r in rows] == [f"projector-partition-{p}" for p in range(stream_settings.partitions)]
    assert {r.projector for r in rows} == {"projector-0-of-2", "projector-1-of-2"}
    assert sum(r.ack_floor for r in rows) > 0


async def _no_lag(settings) -> bool:
    return all(r.lag_events == 0 for r in await projection_status(settings))
