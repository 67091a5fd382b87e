"""The cost of fsync on every write: raw js.publish against two nats-servers, sync_interval always vs 2m,
sequential and with 64 publishes in flight, measured in the same run."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from benchmarks.harness import BenchContext, latency_summary
from fleet_actors.devstack import NatsServer

MESSAGES = 3000
WINDOW = 64


async def _measure(url: str) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="DURABILITY", subjects=["durability.>"])
    payload = b"x" * 100
    latencies = []
    started = time.perf_counter()
    for i in range(MESSAGES // 3):
        t = time.perf_counter()
        await js.publish(f"durability.{i % 100}", payload)
        latencies.append(time.perf_counter() - t)
    sequential = (MESSAGES // 3) / (time.perf_counter() - started)
    started = time.perf_counter()
    for first in range(0, MESSAGES, WINDOW):
        await asyncio.gather(*(js.publish(f"durability.{i % 100}", payload) for i in range(first, first + WINDOW)))
    windowed = MESSAGES / (time.perf_counter() - started)
    await nc.close()
    return {
        "sequential_per_s": round(sequential, 1),
        "window64_per_s": round(windowed, 1),
        **latency_summary(latencies),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    figures: dict[str, Any] = {"messages": MESSAGES}
    for interval in ("always", "2m"):
        folder = Path(tempfile.mkdtemp(prefix=f"fleet-dur-{interval}-"))
        server = NatsServer(folder, sync_interval=interval).start().wait_ready()
        try:
            result = asyncio.run(_measure(server.url))
        finally:
            server.stop()
        figures.update({f"{interval}_{k}": v for k, v in result.items()})
    figures["always_vs_2m_sequential"] = round(figures["always_sequential_per_s"] / figures["2m_sequential_per_s"], 3)
    figures["always_vs_2m_window64"] = round(figures["always_window64_per_s"] / figures["2m_window64_per_s"], 3)
    return figures
