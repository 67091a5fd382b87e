"""Rebuild the graph from the event log: ``python -m fleet_actors.jobs.rebuild [--story ID | --since T]``.

Submit it to a running cluster with ``ray job submit`` (see the README), or run it locally with
``fleet-actors rebuild``. Each run is a new job; ``--job-id`` with the id of an unfinished job (killed,
stopped by Ctrl-C or SIGTERM, or failed) resumes it; a finished job is never run again.
``rebuild status [JOB] | list | cancel JOB`` show and manage the jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from fleet_actors.errors import InvalidCommand, Retryable, StoryError
from fleet_actors.settings import Settings

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--story", action="append", metavar="ID", help="rebuild only this story (repeatable)")
    scope.add_argument("--since", metavar="ISO-TIME", help="rebuild the stories with events at or after this time")
    parser.add_argument(
        "--job-id",
        help="name of the job (default: a new one per run); the id of an unfinished job resumes it, "
        "a finished job is never run again",
    )
    parser.add_argument("--replay-actors", type=int, help="parallel workers (default FLEET_REPLAY_ACTORS)")
    parser.add_argument("--in-process", action="store_true", help="workers as tasks of this process, not Ray actors")
    parser.add_argument(
        "--env-file", type=Path, help="read connection settings from a fleet.env (FLEET_* variables win)"
    )
    actions = parser.add_subparsers(dest="rebuild_action", metavar="[status|list|cancel]")
    status = actions.add_parser("status", help="one job's state and progress (default: the newest job)")
    status.add_argument("job", nargs="?", metavar="JOB_ID")
    actions.add_parser("list", help="every rebuild job of the stream, newest first")
    cancel = actions.add_parser(
        "cancel", help="give up an unfinished (stopped) job: remove its consumers and lift its pause"
    )
    cancel.add_argument("job", metavar="JOB_ID")
    for sub in (status, actions.choices["list"], cancel):
        # SUPPRESS: given before the action (`rebuild --env-file F status`), the value is kept
        sub.add_argument("--env-file", type=Path, default=argparse.SUPPRESS, help="read settings from a fleet.env")
        sub.add_argument(
            "--json", dest="json_output", action="store_true", default=argparse.SUPPRESS, help="print as JSON"
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
    """A new name per run: the scope's kind, the time and a random tail (never an earlier job's)."""
    kind = "stories" if story_ids else "since" if since else "full"
    return f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def replay_workers(requested: int | None, settings: Settings) -> int:
    workers = settings.replay_actors if requested is None else requested
    if workers < 1 or workers > settings.partitions:
        raise InvalidCommand(
            f"--replay-actors must be between 1 and the stream's {settings.partitions} partitions "
            f"(each replay actor owns at least one), not {workers}",
            field="replay_actors",
        )
    return workers


def resume_command(args: argparse.Namespace, job_id: str) -> str:
    parts = ["fleet-actors rebuild", f"--job-id {job_id}"]
    parts += [f"--story {s}" for s in args.story or ()]
    if args.since:
        parts.append(f"--since {args.since}")
    if args.replay_actors:
        parts.append(f"--replay-actors {args.replay_actors}")
    if args.in_process:
        parts.append("--in-process")
    return " ".join(parts)


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a job: stop cleanly (a BaseException, so no handler swallows it)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


async def _run_until_signal(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine``; SIGINT or SIGTERM cancel it and raise :class:`Interrupted`."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coroutine)
    received: list[str] = []

    def stop(signum: signal.Signals) -> None:
        if not received:
            received.append(signum.name)
            task.cancel()

    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop, signum)
            handled.append(signum)
        except (RuntimeError, ValueError):  # not the main thread (tests, embedding): no signal handling
            break
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def execute(args: argparse.Namespace, settings: Settings) -> int:
    action = getattr(args, "rebuild_action", None)
    if action is not None:
        return _job_action(action, args, settings)
    from fleet_actors.domain import rules
    from fleet_actors.jobs.rebuild_job import RebuildJob
    from fleet_actors.projections.rebuild import RebuildScope

    for story_id in args.story or ():
        rules.check_id(story_id, "story")
    since = parse_since(args.since)
    workers = replay_workers(args.replay_actors, settings)
    scope = RebuildScope(tuple(args.story or ()), since)
    job_id = args.job_id or default_job_id(args.story, since)
    rules.check_id(job_id, "job_id")
    from fleet_actors.console import ProgressLine

    progress = ProgressLine("events")

    if args.in_process:
        from fleet_actors.actors.replay_actor import run_in_process as runner
    else:
        from fleet_actors.actors.replay_actor import run_with_ray_actors as runner
        from fleet_actors.client import connect_ray

        connect_ray(settings, start_local=False)  # before our signal handlers: ray.init installs its own for SIGTERM
    from fleet_actors.observability.metrics import serve_process_metrics

    serve_process_metrics(settings)
    print(f"rebuild {job_id}: {scope.describe()} with {workers} replay workers", flush=True)
    job = RebuildJob(settings, job_id, scope, workers)
    how_to_go_on = (
        f"rebuild {job_id} stopped; its progress is kept. Resume it with:\n  {resume_command(args, job_id)}\n"
        f"The live projectors stay paused (`projections status` shows it) until it completes, or until "
        f"`fleet-actors rebuild cancel {job_id}`."
    )
    try:
        report = asyncio.run(_run_until_signal(job.run(functools.partial(runner, settings), progress)))
    except Interrupted as stop:
        progress.end()
        print(f"{stop.signal_name}: {how_to_go_on}", file=sys.stderr, flush=True)
        return 128 + signal.Signals[stop.signal_name].value
    except Retryable as error:
        progress.end()
        # The message is what an operator sees; the job's progress is in Valkey, so say how to go on.
        error.message = f"{error.message}\n{how_to_go_on}"
        raise
    progress.end()
    if report.end_sequence == 0 and report.events == 0:
        print(f"nothing to rebuild: {scope.describe()} is empty; nothing was paused", flush=True)
        return 0
    print(
        f"done: {report.events:,} events{f' of {report.stories} stories' if report.stories else ''} up to "
        f"sequence {report.end_sequence:,} in {report.seconds:.1f} s ({report.rate:,.0f} events/s)"
        f"{' (resumed)' if report.resumed else ''}; live projectors resumed",
        flush=True,
    )
    return 0


def _job_action(action: str, args: argparse.Namespace, settings: Settings) -> int:
    from fleet_actors import console
    from fleet_actors.jobs.rebuild_job import cancel_job, list_jobs

    console.JSON_OUTPUT = console.JSON_OUTPUT or bool(getattr(args, "json_output", False))
    if action == "cancel":
        from fleet_actors.domain import rules

        rules.check_id(args.job, "job_id")
        record = asyncio.run(cancel_job(settings, args.job))
        if console.JSON_OUTPUT:
            console.print_record({"job": args.job, **record})
        else:
            print(
                f"rebuild {args.job} cancelled; its consumers are removed and the live projectors resumed. "
                "The graph may lack what it had wiped and not yet replayed: run a new `fleet-actors rebuild` "
                "(or `fleet-actors verify`)."
            )
        return 0
    rows = asyncio.run(list_jobs(settings))
    if action == "list":
        console.print_table(rows, ["job", "state", "phase", "events", "scope", "started_at", "finished_at",
                                  "pausing_projectors"])  # fmt: skip
        return 0
    if args.job:
        rows = [row for row in rows if row["job"] == args.job]
        if not rows:
            raise InvalidCommand(
                f"there is no rebuild job {args.job!r} (see `fleet-actors rebuild list`)", field="job_id"
            )
    if not rows:
        console.print_record({"job": "(none)"}) if console.JSON_OUTPUT else print("no rebuild jobs")
        return 0
    console.print_record(rows[0])
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
