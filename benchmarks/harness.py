"""Benchmark harness: one local stack and Ray runtime per run, figures as JSON plus a readable table.

Run: ``python -m benchmarks [NAME ...] [--sync always|2m] [--out FILE]``. Each benchmark module
exposes ``run(ctx) -> dict[str, object]`` and measures its raw baseline in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass
class BenchContext:
    stack: Any
    settings: Any
    data_dir: Path
    sync_interval: str
    notes: list[str] = field(default_factory=list)


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def latency_summary(samples_seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def print_table(name: str, figures: dict[str, Any]) -> None:
    print(f"\n== {name}")
    width = max((len(k) for k in figures), default=0)
    for key, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"  {key.ljust(width)}  {shown}")


def run_benchmarks(names: Sequence[str], sync_interval: str, out: Path | None) -> dict[str, Any]:
    import importlib

    import ray

    from fleet_actors.devstack import LocalStack
    from fleet_actors.settings import Settings

    data_dir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    results: dict[str, Any] = {"machine": machine(), "nats_sync_interval": sync_interval, "benchmarks": {}}
    with LocalStack(data_dir, ray=False, nats_sync_interval=sync_interval) as stack:
        settings = stack.settings(Settings(ray_namespace="bench"))
        from fleet_actors.actors.spare_workers import ray_system_config

        ray.init(address="local", num_cpus=4, namespace="bench", logging_level="ERROR", log_to_driver=False,
                 include_dashboard=False, _system_config=ray_system_config())  # fmt: skip
        try:
            ctx = BenchContext(stack, settings, data_dir, sync_interval)
            for name in names:
                module = importlib.import_module(f"benchmarks.bench_{name}")
                started = time.monotonic()
                figures = module.run(ctx)
                figures["benchmark_seconds"] = round(time.monotonic() - started, 1)
                results["benchmarks"][name] = figures
                print_table(name, figures)
        finally:
            ray.shutdown()
            reference = getattr(ctx, "_reference", None)
            if reference is not None:
                reference[0].stop()  # its own session: it would outlive this process otherwise
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults written to {out}")
    return results


REFERENCE_EVENTS = int(os.environ.get("BENCH_REFERENCE_EVENTS", "1000000"))
REFERENCE_STORIES = int(os.environ.get("BENCH_REFERENCE_STORIES", "10000"))


def reference_dataset(ctx: BenchContext) -> tuple[Any, Any]:
    """The 1,000,000-event reference mix over 10,000 stories, seeded once per run into a nats-server
    of its own (default fsync interval: storage and replay do not depend on it, seeding is faster)."""
    cached = getattr(ctx, "_reference", None)
    if cached is not None:
        return cached
    import asyncio

    from fleet_actors.devstack import NatsServer
    from fleet_actors.loadgen.seed import seed

    server = NatsServer(ctx.data_dir / "reference-nats", sync_interval="2m").start().wait_ready()
    settings = ctx.settings.replace(nats_url=server.url, stream_name="REFERENCE", subject_prefix="ref.events")
    started = time.monotonic()
    report = asyncio.run(
        seed(settings, REFERENCE_STORIES, REFERENCE_EVENTS // REFERENCE_STORIES, prefix="ref", window=128)
    )
    ctx.notes.append(
        f"reference mix: {report.events:,} events over {report.stories:,} stories seeded in "
        f"{time.monotonic() - started:.0f} s ({report.rate:,.0f} events/s)"
    )
    ctx._reference = (server, settings)  # type: ignore[attr-defined]
    return server, settings
