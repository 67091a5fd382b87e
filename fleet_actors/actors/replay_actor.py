"""Replay actors: the workers of a rebuild job (``FLEET_REPLAY_ACTORS`` of them)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from typing import Any

import ray

from fleet_actors.composition import open_replayer
from fleet_actors.errors import BackendUnavailable
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import configure as metrics_configure
from fleet_actors.observability.metrics import metrics
from fleet_actors.projections.rebuild import Progress, Replayer, split
from fleet_actors.settings import Settings

PROGRESS = "progress"


class ReplayActor:
    def __init__(self, settings: Settings, job_id: str, index: int, count: int) -> None:
        self._settings, self._job_id, self._index, self._count = settings, job_id, index, count
        tracing.configure(settings)
        metrics_configure(settings)
        self._replayer: Replayer | None = None

    async def _open(self) -> Replayer:
        if self._replayer is None:
            self._replayer = await open_replayer(self._settings, self._job_id, self._index, self._count)
        return self._replayer

    async def replay_until(self, end_sequence: int) -> int:
        try:
            return await (await self._open()).replay_until(end_sequence)
        finally:
            await self._close()

    async def replay_stories(self, story_ids: Sequence[str], end_sequence: int) -> int:
        try:
            return await (await self._open()).replay_stories(story_ids, end_sequence)
        finally:
            await self._close()

    @ray.method(concurrency_group=PROGRESS)
    def progress(self) -> int:
        return self._replayer.done_events if self._replayer else 0

    @ray.method(concurrency_group=PROGRESS)
    def report_progress(self, ratio: float) -> None:
        """Record the whole rebuild's progress on this node's Ray metrics endpoint (the one operators
        scrape): the job's driver is a process nobody scrapes, so it hands the figure to its first actor."""
        metrics().rebuild_progress.set(ratio)

    async def _close(self) -> None:
        if self._replayer is not None:
            with contextlib.suppress(Exception):
                await self._replayer.close()


@functools.cache
def replay_actor_class() -> Any:
    # Ray's typed remote() overloads list the task options only, not the actor's concurrency_groups
    return ray.remote(num_cpus=0, concurrency_groups={PROGRESS: 1}, max_restarts=0)(ReplayActor)  # type: ignore[call-overload]


async def run_with_ray_actors(
    settings: Settings,
    job_id: str,
    workers: int,
    end: int,
    story_ids: Sequence[str],
    total: int,
    progress: Progress | None,
) -> int:
    """One replay actor per share; progress polled every second."""
    actors = [replay_actor_class().remote(settings, job_id, i, workers) for i in range(workers)]
    if story_ids:
        refs = [a.replay_stories.remote(part, end) for a, part in zip(actors, split(story_ids, workers), strict=True)]
    else:
        refs = [a.replay_until.remote(end) for a in actors]
    started = time.monotonic()
    try:
        pending = list(refs)
        while pending:
            _, pending = await asyncio.to_thread(ray.wait, pending, num_returns=len(pending), timeout=1.0)
            done = sum(await asyncio.gather(*(a.progress.remote() for a in actors)))
            # Here for this driver's own endpoint (when it serves one), and through the first actor for
            # the Ray node's, which operators scrape
            await actors[0].report_progress.remote(_record_progress(done, total))
            if progress:
                progress(done, total, time.monotonic() - started)
        return sum(await asyncio.gather(*refs))
    except ray.exceptions.RayActorError as error:  # killed, its node lost, out of memory
        raise BackendUnavailable(f"a replay actor died: {error}") from None
    finally:
        for actor in actors:
            ray.kill(actor)


def _record_progress(done: int, total: int) -> float:
    ratio = min(1.0, done / total) if total else 0.0
    metrics().rebuild_progress.set(ratio)
    return ratio


async def run_in_process(
    settings: Settings,
    job_id: str,
    workers: int,
    end: int,
    story_ids: Sequence[str],
    total: int,
    progress: Progress | None,
) -> int:
    """The same work as tasks of this process (tests, and machines without a Ray cluster)."""
    replayers = [await open_replayer(settings, job_id, i, workers) for i in range(workers)]
    try:
        if story_ids:
            jobs = [r.replay_stories(part, end) for r, part in zip(replayers, split(story_ids, workers), strict=True)]
        else:
            jobs = [r.replay_until(end) for r in replayers]
        work = asyncio.ensure_future(asyncio.gather(*jobs))
        started = time.monotonic()
        try:
            while not work.done():
                await asyncio.wait([work], timeout=1.0)
                done = sum(r.done_events for r in replayers)
                _record_progress(done, total)
                if progress:
                    progress(done, total, time.monotonic() - started)
        except BaseException:
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            raise
        return sum(work.result())
    finally:
        for replayer in replayers:
            await replayer.close()
