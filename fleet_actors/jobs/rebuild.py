"""Rebuild the graph from the event log: ``python -m fleet_actors.jobs.rebuild [--story ID | --since T]``.

Submit it to a running cluster with ``ray job submit`` (see the README), or run it locally with
``fleet-actors rebuild``. Run it again with the same ``--job-id`` to resume a job that was killed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from fleet_actors.errors import InvalidCommand, Retryable, StoryError
from fleet_actors.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--story", action="append", metavar="ID", help="rebuild only this story (repeatable)")
    scope.add_argument("--since", metavar="ISO-TIME", help="rebuild the stories with events at or after this time")
    parser.add_argument("--job-id", help="name of the job; give the same one to resume (default: derived from scope)")
    parser.add_argument("--replay-actors", type=int, help="parallel workers (default FLEET_REPLAY_ACTORS)")
    parser.add_argument("--in-process", action="store_true", help="workers as tasks of this process, not Ray actors")
    parser.add_argument(
        "--env-file", type=Path, help="read connection settings from a fleet.env (FLEET_* variables win)"
    )


def parse_since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidCommand(f"--since {raw!r} is not an ISO-8601 time", field="since") from None
    if value.tzinfo is None:
        raise InvalidCommand("--since needs a timezone, e.g. 2026-11-01T00:00:00+00:00", field="since")
    return value


def default_job_id(story_ids: Sequence[str] | None, since: datetime | None) -> str:
    if story_ids:
        return "stories-" + "-".join(sorted(story_ids))[:40]
    if since:
        return "since-" + since.strftime("%Y%m%dT%H%M%S")
    return "full"


def execute(args: argparse.Namespace, settings: Settings) -> int:
    from fleet_actors.domain import rules
    from fleet_actors.jobs.rebuild_job import RebuildJob
    from fleet_actors.projections.rebuild import RebuildScope, assert_partitions

    for story_id in args.story or ():
        rules.check_id(story_id, "story")
    since = parse_since(args.since)
    workers = args.replay_actors or settings.replay_actors
    assert_partitions(settings, workers)
    scope = RebuildScope(tuple(args.story or ()), since)
    job_id = args.job_id or default_job_id(args.story, since)
    rules.check_id(job_id, "job_id")

    def progress(done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds else 0.0
        eta = (total - done) / rate if rate and total > done else 0.0
        print(f"  {done:,}/{total:,} events  {rate:,.0f}/s  ETA {eta:,.0f} s", flush=True)

    if args.in_process:
        from fleet_actors.actors.replay_actor import run_in_process as runner
    else:
        from fleet_actors.actors.replay_actor import run_with_ray_actors as runner
        from fleet_actors.client import connect_ray

        connect_ray(settings)
    print(f"rebuild {job_id}: {scope.describe()} with {workers} replay workers", flush=True)
    job = RebuildJob(settings, job_id, scope, workers)
    try:
        report = asyncio.run(job.run(functools.partial(runner, settings), progress))
    except Retryable as error:
        # The message is what an operator sees; the job's progress is in Valkey, so say how to go on.
        error.message = (
            f"{error.message}\nrebuild {job_id} stopped; its progress is kept: run the same command again "
            f"(--job-id {job_id}) to resume it (live projectors it paused stay paused until it completes)"
        )
        raise
    print(
        f"done: {report.events:,} events{f' of {report.stories} stories' if report.stories else ''} up to "
        f"sequence {report.end_sequence:,} in {report.seconds:.1f} s ({report.rate:,.0f} events/s)"
        f"{' (resumed)' if report.resumed else ''}; live projectors resumed",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet_actors.jobs.rebuild", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.env_file:
        from fleet_actors.settings import load_env_file

        env = {**load_env_file(args.env_file), **env}
    try:
        return execute(args, Settings.from_env(env))
    except StoryError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
