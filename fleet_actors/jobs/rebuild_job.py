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
from typing import Any

from fleet_actors.adapters.jetstream import connect_nats
from fleet_actors.adapters.jetstream.stream_queries import StreamQueries
from fleet_actors.composition import open_event_store, open_projection_control, open_read_side
from fleet_actors.errors import BackendUnavailable, InvalidCommand
from fleet_actors.ports.read_models import ProjectionControl
from fleet_actors.projections.rebuild import Progress, RebuildScope
from fleet_actors.settings import Settings

PAUSE_TIMEOUT = 60.0


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
    """The driver: pause, wipe, replay with N workers, hand over. Safe to run again after a kill."""

    def __init__(self, settings: Settings, job_id: str, scope: RebuildScope, workers: int) -> None:
        if workers < 1:
            raise InvalidCommand("there must be at least one replay actor", field="replay_actors")
        self.settings, self.job_id, self.scope, self.workers = settings, job_id, scope, workers

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
            state = await control.job_progress(self.job_id)
            resumed = bool(state)
            await self._pause(control, stream)
            if "end_sequence" not in state:
                state["end_sequence"] = str(await stream.end_sequence())
                await control.record_job_progress(self.job_id, end_sequence=state["end_sequence"], phase="pause")
            end = int(state["end_sequence"])
            since = self.scope.since
            story_ids = list(self.scope.story_ids) or (await stream.stories_changed_since(since) if since else [])
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
            total = end if self.scope.whole else sum([await stream.count_events(s) for s in story_ids])
            done = await run_workers(self.job_id, self.workers, end, story_ids, total, progress)
            await stream.delete_consumers_named(f"rebuild-{self.job_id}-")
            await control.resume()
            await control.record_job_progress(self.job_id, phase="done")
            return RebuildReport(
                self.job_id, self.scope.describe(), end, done, len(story_ids), time.monotonic() - started, resumed
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
