"""The rebuild job's driver: rebuild the graph from the event log, in parallel, resumable, with an
exact hand-over. Its replayers are :class:`fleet_actors.projections.rebuild.Replayer`.

Protocol (a job's progress lives in Valkey under ``rebuild:{stream}:{job}``, so a killed job
resumes where it stopped):

1. **pause**: set ``projection:pause:{stream}``; every running live projector finishes its batch,
   acknowledges, and stays off the graph.
2. **end**: record the log's last sequence. Everything up to it is the rebuild's; everything
   after it stays with the live projectors.
3. **wipe**: delete the graph (or the chosen stories' subgraphs).
4. **replay**: ``replay_actors`` replayers, each owning a share of the partitions (whole graph) or
   of the stories, apply events up to the end sequence in large batches. Their consumers are
   durable: a killed replayer resumes from its ack floor.
5. **hand-over**: delete the replay consumers and lift the pause. The live projectors resume at
   their own ack floors; events up to the end are skipped by the graph's version guard, later ones
   applied: no gap, nothing applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet_actors.adapters.jetstream import connect_nats
from fleet_actors.adapters.jetstream.stream_queries import StreamQueries
from fleet_actors.composition import open_event_store, open_projection_control, open_read_side
from fleet_actors.errors import BackendUnavailable, InvalidCommand, RuleViolation, StoryNotFound
from fleet_actors.ports.read_models import ProjectionControl
from fleet_actors.projections.rebuild import Progress, RebuildScope
from fleet_actors.settings import Settings

PAUSE_TIMEOUT = 60.0
#: a job that recorded progress within this many seconds (and did not say it stopped) is running
HEARTBEAT_SECONDS = 2.0
RUNNING_WITHIN = 15.0
#: phases of a job's record; FINISHED ones are never resumed
FINISHED = ("done", "cancelled")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def job_state(record: dict[str, str], now: float | None = None) -> str:
    """What an operator needs to know of a job record: running, stopped (resumable), done, cancelled."""
    phase = record.get("phase", "")
    if phase in FINISHED:
        return phase
    beat = float(record.get("heartbeat", "0") or 0)
    if record.get("stopped") != "1" and (now or time.time()) - beat < RUNNING_WITHIN:
        return "running"
    return "stopped"


@dataclass
class RebuildReport:
    job_id: str
    scope: str
    end_sequence: int
    events: int
    stories: int
    seconds: float
    resumed: bool

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


Workers = Callable[[str, int, int], Any]


class RebuildJob:
    """The driver: pause, wipe, replay with N workers, hand over. Safe to run again after a kill.

    A job is named by its id: a new id is a new job; the id of an unfinished job resumes it; a
    finished (or cancelled) job is never run again.
    """

    def __init__(self, settings: Settings, job_id: str, scope: RebuildScope, workers: int) -> None:
        if workers < 1:
            raise InvalidCommand("there must be at least one replay actor", field="replay_actors")
        self.settings, self.job_id, self.scope, self.workers = settings, job_id, scope, workers
        self._done_total = (0, 0)

    async def run(self, run_workers: Callable[..., Any], progress: Progress | None = None) -> RebuildReport:
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as connections:
            control = await open_projection_control(self.settings)
            connections.push_async_callback(control.close)
            nc = await connect_nats(self.settings, name="fleet-rebuild")
            connections.push_async_callback(nc.close)
            read_side = await open_read_side(self.settings)
            connections.push_async_callback(read_side.close)
            stream = StreamQueries(nc, self.settings)
            graph = read_side.graph
            since = self.scope.since
            story_ids = list(self.scope.story_ids) or (await stream.stories_changed_since(since) if since else [])
            counts = {} if self.scope.whole else {s: await stream.count_events(s) for s in story_ids}
            missing = [s for s in self.scope.story_ids if not counts.get(s)]
            if missing:  # before anything is paused or wiped
                raise StoryNotFound(missing[0])
            if not self.scope.whole and not story_ids:  # no story changed since then: nothing to pause
                return RebuildReport(self.job_id, self.scope.describe(), 0, 0, 0, time.monotonic() - started, False)
            state = await self._claim(control)
            resumed = bool(state)
            heartbeat = asyncio.create_task(self._heartbeat(control))
            try:
                await self._pause(control, stream)
                if "end_sequence" not in state:
                    state["end_sequence"] = str(await stream.end_sequence())
                    await control.record_job_progress(self.job_id, end_sequence=state["end_sequence"], phase="pause")
                end = int(state["end_sequence"])
                if state.get("phase") in (None, "pause"):
                    if self.scope.whole:
                        # every story of the log, the archived ones included
                        story_ids_to_wipe = await (await open_event_store(self.settings, nc)).story_ids()
                    else:
                        story_ids_to_wipe = story_ids
                    # Only the stories this log can rebuild: a graph database may hold other data, and
                    # stories absent from the log could not come back.
                    await graph.wipe_stories(story_ids_to_wipe)
                    await control.record_job_progress(self.job_id, phase="replay")
                if resumed:  # what a killed run held in hand comes back now, not after the ack wait
                    await stream.hand_back_consumers(f"rebuild-{self.job_id}-")
                total = end if self.scope.whole else sum(counts.values())
                self._done_total = (0, total)

                def report_progress(done: int, total: int, seconds: float) -> None:
                    self._done_total = (done, total)
                    if progress:
                        progress(done, total, seconds)

                done = await run_workers(self.job_id, self.workers, end, story_ids, total, report_progress)
                await stream.delete_consumers_named(f"rebuild-{self.job_id}-")
                await control.resume()
                self._done_total = (done, total)
            except BaseException:
                heartbeat.cancel()
                with contextlib.suppress(BaseException):
                    await self._record_stop(control)
                raise
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await control.record_job_progress(
                self.job_id, phase="done", stopped="1", finished_at=now_iso(), events_done=str(done)
            )
            return RebuildReport(
                self.job_id, self.scope.describe(), end, done, len(story_ids), time.monotonic() - started, resumed
            )

    async def _claim(self, control: ProjectionControl) -> dict[str, str]:
        """This job's record (empty for a new job) after checking it may run now."""
        state = await control.job_progress(self.job_id)
        phase = state.get("phase")
        if phase in FINISHED:
            raise InvalidCommand(
                f"rebuild {self.job_id} is {'finished' if phase == 'done' else 'cancelled'} "
                f"({state.get('finished_at', 'earlier')}); a finished job is never run again: run "
                f"`fleet-actors rebuild` without --job-id (or with a new one) for a new rebuild",
                field="job_id",
            )
        if state and job_state(state) == "running":
            raise RuleViolation(
                f"rebuild {self.job_id} is running now (progress {time.time() - float(state['heartbeat']):.0f} s ago); "
                "stop it first (Ctrl-C, or `ray job stop`) to resume it here",
                field="job_id",
            )
        if state and state.get("scope") not in (None, self.scope.describe()):
            raise InvalidCommand(
                f"rebuild {self.job_id} rebuilds {state['scope']}, not {self.scope.describe()}: resume it "
                "with the options it started with, or start a new job",
                field="job_id",
            )
        pausing = await control.pausing_job()
        if pausing is not None and pausing != self.job_id:
            raise RuleViolation(
                f"rebuild {pausing} is unfinished and keeps the live projectors paused: resume it "
                f"(`fleet-actors rebuild --job-id {pausing}` with its options) or cancel it "
                f"(`fleet-actors rebuild cancel {pausing}`) first",
                field="job_id",
            )
        fields = {"heartbeat": str(time.time()), "stopped": "0", "scope": self.scope.describe()}
        if not state:
            fields.update(started_at=now_iso(), phase="pause")
        else:
            fields["resumed_at"] = now_iso()
        await control.record_job_progress(self.job_id, **fields)
        return state

    async def _heartbeat(self, control: ProjectionControl) -> None:
        while True:
            done, total = self._done_total
            with contextlib.suppress(Exception):
                await control.record_job_progress(
                    self.job_id, heartbeat=str(time.time()), events_done=str(done), events_total=str(total)
                )
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _record_stop(self, control: ProjectionControl) -> None:
        done, total = self._done_total
        await control.record_job_progress(
            self.job_id, stopped="1", stopped_at=now_iso(), events_done=str(done), events_total=str(total)
        )

    async def _pause(self, control: ProjectionControl, stream: StreamQueries) -> None:
        await control.pause(self.job_id)
        live = await stream.waiting_consumers(prefix="projector-", exclude_suffix="-snapshots")
        deadline = time.monotonic() + PAUSE_TIMEOUT
        for name in live:
            while await control.paused_for(name) != self.job_id:
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"live projector {name} did not pause within {PAUSE_TIMEOUT:.0f} s")
                await asyncio.sleep(0.1)


async def list_jobs(settings: Settings) -> list[dict[str, str]]:
    """Every rebuild job of the stream, newest first, with its state (running, stopped, done, cancelled)."""
    control = await open_projection_control(settings)
    try:
        jobs = await control.rebuild_jobs()
        pausing = await control.pausing_job()
    finally:
        await control.close()
    now = time.time()
    rows = []
    for job_id, record in jobs.items():
        rows.append(
            {
                "job": job_id,
                "state": job_state(record, now),
                "phase": record.get("phase", ""),
                "scope": record.get("scope", ""),
                "events": f"{int(record.get('events_done', '0') or 0):,}/{int(record.get('events_total', '0') or 0):,}",
                "end_sequence": record.get("end_sequence", ""),
                "started_at": record.get("started_at", ""),
                "finished_at": record.get("finished_at", record.get("stopped_at", "")),
                "pausing_projectors": "yes" if pausing == job_id else "",
            }
        )
    return sorted(rows, key=lambda row: row["started_at"], reverse=True)


async def cancel_job(settings: Settings, job_id: str) -> dict[str, str]:
    """Give up an unfinished job: remove its replay consumers, lift its pause, mark it cancelled.

    The graph may then lack what the job had wiped and not yet replayed: start a new rebuild."""
    control = await open_projection_control(settings)
    try:
        record = await control.job_progress(job_id)
        if not record:
            raise InvalidCommand(
                f"there is no rebuild job {job_id!r} (see `fleet-actors rebuild list`)", field="job_id"
            )
        state = job_state(record)
        if state in FINISHED:
            raise InvalidCommand(f"rebuild {job_id} is already {state}", field="job_id")
        if state == "running":
            raise RuleViolation(
                f"rebuild {job_id} is running now: stop it first (Ctrl-C, or `ray job stop`), then cancel it",
                field="job_id",
            )
        nc = await connect_nats(settings, name="fleet-rebuild-cancel")
        try:
            await StreamQueries(nc, settings).delete_consumers_named(f"rebuild-{job_id}-")
        finally:
            await nc.close()
        if await control.pausing_job() == job_id:
            await control.resume()
        await control.record_job_progress(job_id, phase="cancelled", stopped="1", finished_at=now_iso())
        return await control.job_progress(job_id)
    finally:
        await control.close()
