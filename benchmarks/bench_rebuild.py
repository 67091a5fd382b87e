"""Rebuilding the graph from the 1,000,000-event reference mix with 1, 2 and 4 replay actors, next to the
raw UNWIND MERGE rate of the same graph server measured in the same run."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import Any

from benchmarks.harness import BenchContext, reference_dataset
from benchmarks.raw_graph import raw_unwind_merge_rate
from fleet_actors.actors.replay_actor import run_with_ray_actors
from fleet_actors.jobs.rebuild_job import RebuildJob
from fleet_actors.projections.rebuild import RebuildScope

WORKERS = [int(n) for n in os.environ.get("BENCH_REBUILD_WORKERS", "1,2,4").split(",")]


def run(ctx: BenchContext) -> dict[str, Any]:
    _, settings = reference_dataset(ctx)
    raw = asyncio.run(raw_unwind_merge_rate(settings, 50_000))
    figures: dict[str, Any] = {"raw_unwind_merge_rows_per_s": round(raw, 1)}
    for workers in WORKERS:
        job = RebuildJob(settings, f"bench-{workers}-{int(time.time())}", RebuildScope(), workers)
        report = asyncio.run(job.run(functools.partial(run_with_ray_actors, settings)))
        figures[f"replay_actors_{workers}_events"] = report.events
        figures[f"replay_actors_{workers}_seconds"] = round(report.seconds, 1)
        figures[f"replay_actors_{workers}_events_per_s"] = round(report.rate, 1)
        figures[f"replay_actors_{workers}_ratio_to_raw"] = round(report.rate / raw, 3)
    return figures
