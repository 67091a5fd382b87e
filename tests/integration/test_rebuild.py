"""Rebuilding the graph from the log: whole, one story, killed and resumed, under live traffic."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import subprocess
import sys

import pytest

from fleet_actors.actors.replay_actor import run_in_process
from fleet_actors.domain.commands import RecordSummary, UpdateSubtask
from fleet_actors.errors import BackendUnavailable
from fleet_actors.jobs import rebuild as rebuild_job
from fleet_actors.jobs.rebuild_job import RebuildJob
from fleet_actors.jobs.verify import verify
from fleet_actors.loadgen.seed import seed
from fleet_actors.projections.rebuild import RebuildScope
from fleet_actors.projections.verify import actual_graph
from tests.integration.conftest import RunningProjectors, wait_until, write_story


async def all_projected(running: RunningProjectors, settings) -> bool:
    report = await verify(settings)
    return report.ok


async def test_whole_rebuild_while_commands_keep_arriving(stream_settings, execute, unique_id):
    stories = [unique_id("R") for _ in range(6)]
    for sid in stories:
        await write_story(execute, sid, extra_updates=10)
    running = await RunningProjectors(stream_settings, 2).start()
    try:
        await wait_until(lambda: all_projected(running, stream_settings), timeout=30)

        async def traffic():
            for i in range(30):
                await execute(stories[i % len(stories)], RecordSummary(f"during rebuild {i}"))
                await asyncio.sleep(0.02)

        job = RebuildJob(stream_settings, "full", RebuildScope(), workers=2)
        report, _ = await asyncio.gather(job.run(functools.partial(run_in_process, stream_settings)), traffic())
        assert report.events > 0 and not report.resumed
        await wait_until(lambda: all_projected(running, stream_settings), timeout=30)
        graph = await actual_graph(running.graph, stories[0])
        assert sum(graph["milestones"].values()) == 1 and sum(graph["subtasks"].values()) == 2
    finally:
        await running.stop()


async def test_rebuild_killed_half_way_resumes(stream_settings):
    await seed(stream_settings, 40, 60, prefix="k")  # 2,400 events: several batches per worker
    job = RebuildJob(stream_settings, "killed", RebuildScope(), workers=2)
    runner = functools.partial(run_in_process, stream_settings)
    task = asyncio.create_task(job.run(runner))
    graph_probe = await RunningProjectors(stream_settings, 1).start()
    try:

        async def some_progress() -> bool:
            rows = await graph_probe.graph.query("MATCH (s:Story) RETURN count(s) AS n")
            return rows[0]["n"] > 0

        await wait_until(some_progress, timeout=60)
        task.cancel()  # the job dies half-way
        await asyncio.gather(task, return_exceptions=True)
        report = await RebuildJob(stream_settings, "killed", RebuildScope(), workers=2).run(runner)
        assert report.resumed
        await wait_until(lambda: all_projected(graph_probe, stream_settings), timeout=60)
        graph = await actual_graph(graph_probe.graph, "k-0000007")
        assert sum(graph["story"].values()) == 1
    finally:
        await graph_probe.stop()


async def test_rebuild_of_one_story_repairs_it_and_leaves_others(stream_settings, execute, unique_id):
    broken, other = unique_id("B"), unique_id("O")
    await write_story(execute, broken)
    await write_story(execute, other)
    running = await RunningProjectors(stream_settings, 1).start()
    try:
        await wait_until(lambda: all_projected(running, stream_settings))
        await running.graph.write("MATCH (t:Subtask {uid: $uid}) DETACH DELETE t", uid=f"{broken}/T1")
        assert not (await verify(stream_settings, [broken])).ok
        args = argparse.Namespace(story=[broken], since=None, job_id=None, replay_actors=1, in_process=True)
        assert await asyncio.to_thread(rebuild_job.execute, args, stream_settings) == 0
        assert (await verify(stream_settings)).ok
        later = await execute(broken, UpdateSubtask("T1", "DONE"))  # live projection carries on
        await wait_until(lambda: _graph_at(running, broken, later.version))
    finally:
        await running.stop()


async def _graph_at(running: RunningProjectors, story_id: str, version: int) -> bool:
    return (await running.graph.applied_versions([story_id]))[story_id] == version


async def test_rebuild_job_with_ray_replay_actors(ray_runtime, stream_settings):
    await seed(stream_settings, 10, 30, prefix="ray")
    args = argparse.Namespace(story=None, since=None, job_id="ray-job", replay_actors=2, in_process=False)
    assert await asyncio.to_thread(rebuild_job.execute, args, stream_settings) == 0
    report = await verify(stream_settings, documents=False)  # no live projector: the graph alone
    assert report.ok and len(report.stories) == 10


async def test_rebuild_of_the_stories_changed_since_a_time(stream_settings, execute, unique_id):
    from datetime import UTC, datetime

    old, recent = unique_id("OLD"), unique_id("NEW")
    await write_story(execute, old)
    await asyncio.sleep(1.1)
    since = datetime.now(UTC)
    await write_story(execute, recent)
    running = await RunningProjectors(stream_settings, 1).start()
    try:
        await wait_until(lambda: all_projected(running, stream_settings))
        args = argparse.Namespace(story=None, since=since.isoformat(), job_id=None, replay_actors=1, in_process=True)
        assert await asyncio.to_thread(rebuild_job.execute, args, stream_settings) == 0
        job = RebuildJob(stream_settings, "probe", RebuildScope(since=since), workers=1)
        assert job.scope.describe().startswith("stories changed since")
        assert (await verify(stream_settings)).ok
    finally:
        await running.stop()


def test_a_rebuild_that_cannot_reach_nats_fails_typed_and_says_how_to_resume(stream_settings):
    unreachable = stream_settings.replace(nats_url="nats://127.0.0.1:9", nats_timeout=0.5)
    args = argparse.Namespace(story=None, since=None, job_id="nats-down", replay_actors=1, in_process=True)
    with pytest.raises(BackendUnavailable) as caught:
        rebuild_job.execute(args, unreachable)
    assert "nats://127.0.0.1:9" in caught.value.message
    resume = "Resume it with:\n  fleet-actors rebuild --job-id nats-down --replay-actors 1 --in-process"
    assert resume in caught.value.message


def _cli_args(*argv: str) -> argparse.Namespace:
    from fleet_actors.cli.main import build_parser

    return build_parser().parse_args(["rebuild", *argv])


async def test_each_rebuild_is_a_new_job_and_a_finished_one_is_never_resumed(
    stream_settings, execute, unique_id, capsys
):
    """Issue #21 (2): a second default rebuild 'resumed' the finished job `full` and did nothing."""
    from fleet_actors import console
    from fleet_actors.errors import InvalidCommand

    story = unique_id("J")
    await write_story(execute, story)
    for _ in range(2):
        assert await asyncio.to_thread(rebuild_job.execute, _cli_args("--in-process"), stream_settings) == 0
        out = capsys.readouterr().out
        assert "done:" in out and "(resumed)" not in out and " 0 events" not in out
    console.JSON_OUTPUT = True
    try:
        await asyncio.to_thread(rebuild_job.execute, _cli_args("list"), stream_settings)
        jobs = json.loads(capsys.readouterr().out)
        assert len(jobs) == 2 and {j["state"] for j in jobs} == {"done"} and jobs[0]["job"] != jobs[1]["job"]
        finished = jobs[0]["job"]
        await asyncio.to_thread(rebuild_job.execute, _cli_args("status"), stream_settings)
        assert json.loads(capsys.readouterr().out)["job"] == finished  # the newest
    finally:
        console.JSON_OUTPUT = False
    with pytest.raises(InvalidCommand, match="never run again"):
        await asyncio.to_thread(rebuild_job.execute, _cli_args("--in-process", "--job-id", finished), stream_settings)
    with pytest.raises(InvalidCommand, match="already done"):
        await asyncio.to_thread(rebuild_job.execute, _cli_args("cancel", finished), stream_settings)


async def test_a_stopped_job_is_cancelled_and_blocks_other_jobs_until_then(stream_settings):
    from fleet_actors.composition import open_projection_control
    from fleet_actors.errors import RuleViolation

    await seed(stream_settings, 30, 60, prefix="c")
    job = RebuildJob(stream_settings, "to-cancel", RebuildScope(), workers=2)
    progressed = asyncio.Event()
    task = asyncio.create_task(
        job.run(functools.partial(run_in_process, stream_settings), lambda done, total, s: done and progressed.set())
    )
    await asyncio.wait_for(progressed.wait(), 60)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(RuleViolation, match="rebuild to-cancel is unfinished"):
        await asyncio.to_thread(rebuild_job.execute, _cli_args("--in-process"), stream_settings)
    assert await asyncio.to_thread(rebuild_job.execute, _cli_args("cancel", "to-cancel"), stream_settings) == 0
    control = await open_projection_control(stream_settings)
    try:
        assert await control.pausing_job() is None
        assert (await control.job_progress("to-cancel"))["phase"] == "cancelled"
    finally:
        await control.close()


def test_rebuild_refuses_unknown_stories_and_impossible_worker_counts(stream_settings, unique_id):
    """Issue #21 (6): `--story no-such-story` paused the projectors and reported done; 0 became 2; 100 raised."""
    from fleet_actors.composition import open_projection_control
    from fleet_actors.errors import InvalidCommand, StoryNotFound

    asyncio.run(seed(stream_settings, 1, 5, prefix=unique_id("one")))
    with pytest.raises(StoryNotFound):
        rebuild_job.execute(_cli_args("--in-process", "--story", unique_id("missing")), stream_settings)

    async def pausing():
        control = await open_projection_control(stream_settings)
        try:
            return await control.pausing_job()
        finally:
            await control.close()

    assert asyncio.run(pausing()) is None
    for count in ("0", "100"):
        with pytest.raises(InvalidCommand, match="--replay-actors must be between 1 and"):
            rebuild_job.execute(_cli_args("--in-process", "--replay-actors", count), stream_settings)


def _cli_env(local_stack, settings, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "RAY_ADDRESS"}
    env.update(local_stack.env())
    env.update(
        FLEET_STREAM_NAME=settings.stream_name,
        FLEET_SUBJECT_PREFIX=settings.subject_prefix,
        FLEET_DATA_DIR=str(tmp_path),  # no fleet.env of a running `dev up` is picked up
    )
    return env


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "fleet_actors.cli.main", *argv]


def test_sigint_stops_a_rebuild_cleanly_with_the_resume_command(local_stack, stream_settings, tmp_path):
    """Issue #21 (3): Ctrl-C printed a traceback, no resume hint, and the pause was visible nowhere."""
    asyncio.run(seed(stream_settings, 60, 100, prefix="int"))  # 6,000 events: seconds of replay
    env = _cli_env(local_stack, stream_settings, tmp_path)
    job = subprocess.Popen(
        _cli("rebuild", "--in-process", "--replay-actors", "2"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        job_id = job.stdout.readline().split()[1].rstrip(":")  # "rebuild <id>: the whole graph ..."
        seen = [job.stderr.readline()]  # the first progress line comes once replay runs
        while seen[-1] and "events" not in seen[-1]:
            seen.append(job.stderr.readline())
        assert "events" in seen[-1], seen
        job.send_signal(signal.SIGINT)
        _out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, err
    assert "Traceback" not in err
    assert f"SIGINT: rebuild {job_id} stopped" in err
    assert f"fleet-actors rebuild --job-id {job_id} --replay-actors 2 --in-process" in err
    status = subprocess.run(_cli("projections", "status"), env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"paused by rebuild {job_id}" in status.stdout
    listed = subprocess.run(_cli("rebuild", "list", "--json"), env=env, capture_output=True, text=True, timeout=60)
    assert [(j["job"], j["state"]) for j in json.loads(listed.stdout)] == [(job_id, "stopped")]
    resumed = subprocess.run(
        _cli("rebuild", "--in-process", "--replay-actors", "2", "--job-id", job_id),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stdout


async def test_a_resumed_ray_job_takes_over_what_the_killed_run_held_at_once(ray_runtime, stream_settings):
    """Issue #21 (3): the resume of a killed job sat still for the replay consumers' ack wait (120 s)."""
    from fleet_actors.actors.replay_actor import run_with_ray_actors

    await seed(stream_settings, 60, 100, prefix="rk")
    runner = functools.partial(run_with_ray_actors, stream_settings)
    progressed = asyncio.Event()
    task = asyncio.create_task(
        RebuildJob(stream_settings, "ray-killed", RebuildScope(), workers=2).run(
            runner, lambda done, total, seconds: done and progressed.set()
        )
    )
    await asyncio.wait_for(progressed.wait(), 120)
    task.cancel()  # the replay actors are killed with events in hand
    await asyncio.gather(task, return_exceptions=True)
    started = asyncio.get_running_loop().time()
    report = await RebuildJob(stream_settings, "ray-killed", RebuildScope(), workers=2).run(runner)
    assert report.resumed
    assert asyncio.get_running_loop().time() - started < 60  # REPLAY_POLICY.ack_wait is 120 s
    assert (await verify(stream_settings, documents=False)).ok


async def test_seeding_an_existing_prefix_says_it_exists(stream_settings, unique_id):
    """Issue #21 (6): it said 'changed by another writer'."""
    from fleet_actors.errors import StoryAlreadyExists

    prefix = unique_id("again")
    await seed(stream_settings, 2, 5, prefix=prefix)
    with pytest.raises(StoryAlreadyExists, match="already exists: seed with another --prefix"):
        await seed(stream_settings, 2, 5, prefix=prefix)
