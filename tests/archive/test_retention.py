"""Retention behind the archive: events age out only once archived, verified and snapshotted, and a
story from before the horizon still activates, projects, rebuilds and answers temporal queries."""

from __future__ import annotations

import argparse
import asyncio
import functools

from fleet_actors.actors.replay_actor import run_in_process
from fleet_actors.adapters.jetstream.retention import StreamRetention
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.composition import archiver_on
from fleet_actors.direct_reads import DirectReads
from fleet_actors.domain.commands import CreateStory, RecordSummary, UpdateSubtask
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.jobs import rebuild as rebuild_job
from fleet_actors.jobs.rebuild_job import RebuildJob
from fleet_actors.jobs.verify import verify
from fleet_actors.projections.rebuild import RebuildScope
from tests.archive.conftest import MAX_AGE, Fleet
from tests.integration.conftest import RunningProjectors, wait_until, write_story


async def stored_sequences(fleet: Fleet) -> tuple[set[int], int]:
    info = await fleet.stream.connection.jsm().stream_info(fleet.settings.stream_name)
    last = info.state.last_seq
    stream = StreamRetention(fleet.stream.connection, fleet.settings)
    present = {row.sequence async for row in stream.read_range(1, last)}
    return present, last


async def test_events_age_out_only_behind_the_archive_and_old_stories_keep_working(fleet: Fleet, unique_id):
    settings = fleet.settings
    old, young = unique_id("OLD"), unique_id("YNG")
    await fleet.execute(young, CreateStory("young", "written before the others"))
    await write_story(fleet.execute, old, extra_updates=25)
    await write_story(fleet.execute, unique_id("MID"))
    reference = [stored.envelope async for stored in fleet.stream.read(old)]
    assert [e.version for e in reference] == list(range(1, 36))
    archiver = await archiver_on(settings, fleet.stream.connection, fleet.archive, segment_events=10)
    await asyncio.sleep(MAX_AGE + 0.5)

    # Nothing archived: nothing is deleted, however old.
    assert (await archiver.enforce_retention()).purged_through == 0
    present, last = await stored_sequences(fleet)
    assert present == set(range(1, last + 1))

    # Archiving behind: deletion stops at what is archived.
    await archiver.archive_once(up_to=20)
    report = await archiver.enforce_retention()
    assert 0 < report.purged_through <= 20 and report.snapshots_taken >= 1
    present, last = await stored_sequences(fleet)
    missing = set(range(1, last + 1)) - present
    assert missing and max(missing) <= 20

    # Everything archived: all aged events go, except each story's head; young ones stay.
    later = await fleet.execute(young, RecordSummary("after the horizon"))
    await archiver.archive_once()
    report = await archiver.enforce_retention()
    manifest = await fleet.archive.manifest()
    present, last = await stored_sequences(fleet)
    missing = set(range(1, last + 1)) - present
    assert max(missing) <= manifest.last_sequence and not await fleet.archive.verify(manifest)
    old_head = await fleet.stream.last_sequence(old)
    assert old_head in present and [s.sequence async for s in fleet.stream.read(old)] == [old_head]
    info = await fleet.stream.connection.jsm().stream_info(settings.stream_name)
    assert info.state.first_seq > 1 and info.config.max_age == 0  # the archiver deletes, never a timer
    assert (await fleet.stream.read_all(young))[-1].envelope.version == later.version

    # Activation from the stream alone (snapshot + later events), and through the composite store.
    alone = StoryRuntime(old, fleet.stream, snapshots=fleet.snapshots)
    await alone.load()
    full = fold(StoryState(old), reference)
    assert alone.state == full and alone.replayed_on_load == 0
    runtime = fleet.runtime(old, fresh=True)
    await runtime.load(use_snapshot=False)
    assert runtime.state == full

    # History and temporal queries reach past the horizon, with no gap or overlap at the seam.
    assert await runtime.history() == reference
    assert await runtime.history(from_version=30, limit=3) == reference[29:32]
    reads = DirectReads(settings)  # in a caller's process, as FleetClient reads: the same events
    try:
        assert await reads.history(old, 1, None) == reference
        assert await reads.history(old, 30, 3) == reference[29:32]
        assert await reads.state_at(old, 20, None) == fold(StoryState(old), reference[:20])
    finally:
        await reads.close()
    for envelope in reference:
        expected = fold(StoryState(old), reference[: envelope.version])
        assert await runtime.state_at(version=envelope.version) == expected
        at_time = fold(StoryState(old), [e for e in reference if e.timestamp <= envelope.timestamp])
        assert await runtime.state_at(at=envelope.timestamp) == at_time

    # Writes keep their concurrency check (the head stayed), from a fresh actor's runtime.
    after = await fleet.execute(old, UpdateSubtask("T1", "IN_PROGRESS"))
    assert after.version == 36

    # Projectors started now heal the old story from the archive; one-story and full rebuilds work.
    running = await RunningProjectors(settings, 1).start()
    try:
        await wait_until(lambda: _ok(settings), timeout=60)
        assert running.projectors[0].progress.healed_from_log >= 34  # v1..v34 come from the archive
        await running.graph.write("MATCH (t:Subtask {uid: $uid}) DETACH DELETE t", uid=f"{old}/T1")
        assert not (await verify(settings, [old])).ok
        args = argparse.Namespace(story=[old], since=None, job_id=None, replay_actors=1, in_process=True)
        assert await asyncio.to_thread(rebuild_job.execute, args, settings) == 0
        assert (await verify(settings, [old])).ok
        await running.graph.write("MATCH (t:Subtask {uid: $uid}) DETACH DELETE t", uid=f"{old}/T2")
        job = RebuildJob(settings, "full-archive", RebuildScope(), workers=2)
        rebuilt = await job.run(functools.partial(run_in_process, settings))
        assert rebuilt.events >= last - len(missing)
        await wait_until(lambda: _ok(settings), timeout=60)
        assert (await running.graph.applied_versions([old]))[old] == 36
    finally:
        await running.stop()


async def _ok(settings) -> bool:
    return (await verify(settings)).ok
