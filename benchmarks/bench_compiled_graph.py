"""Ray Compiled Graphs (``ray.dag``, ``experimental_compile``) against ordinary actor calls, for a
long-lived caller such as the gateway (issue 25). The same synchronous no-op method, called one at
a time through ``.remote()`` and through a graph compiled for its actor, in alternating rounds;
then over BENCH_GRAPH_ACTORS actors (default 20), one graph each as one graph per story actor would
be, with SUBMITTERS asyncio callers in flight.

What a graph is, as Ray 2.60 builds it: shared-memory channels between the compiling process and
the actor, and a loop in the actor's ``_ray_system`` concurrency group (a thread of its own) that
waits on them. Only the compiling process can execute the graph; an actor takes part in one graph
at a time; its ordinary calls keep running beside the graph's, on the main thread, not serialised
with them; and every graph starts a ``DAGDriverProxyActor`` (one more worker process) on the
caller's node. Run it with ``python -m benchmarks compiled_graph`` (it uses none of the servers).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from typing import Any

import ray
from ray.dag import InputNode

from benchmarks.harness import BenchContext, latency_summary

ROUNDS = 6
CALLS = int(os.environ.get("BENCH_GRAPH_CALLS", "3000"))
#: live actors of the spread part (one graph each); 50 live stories would be 50
ACTORS = int(os.environ.get("BENCH_GRAPH_ACTORS", "20"))
SUBMITTERS = 8


@ray.remote(num_cpus=0)
class Echo:
    def call(self, payload: bytes) -> bytes:
        return payload


def _sequential(call: Any, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


async def _spread(call: Any, count: int) -> float:
    """Seconds for ``count`` calls by SUBMITTERS asyncio callers, each to a random one of the actors."""

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(count // SUBMITTERS):
            await call(rng.randrange(ACTORS))

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(SUBMITTERS)))
    return time.perf_counter() - started


def _compile(actor: Any, *, enable_asyncio: bool) -> Any:
    with InputNode() as payload:
        node = actor.call.bind(payload)
    return node.experimental_compile(enable_asyncio=enable_asyncio)


def run(ctx: BenchContext) -> dict[str, Any]:
    payload = b"x" * 300  # about a packed CommandRequest
    figures: dict[str, Any] = {"calls": CALLS, "rounds": ROUNDS}

    # One actor, one caller: an ordinary call against the compiled graph's execute.
    plain, graphed = Echo.remote(), Echo.remote()
    ray.get([plain.call.remote(payload), graphed.call.remote(payload)])
    graph = _compile(graphed, enable_asyncio=False)
    ray.get(graph.execute(payload))
    latencies: dict[str, list[float]] = {"ray_call": [], "compiled_graph": []}
    for _ in range(ROUNDS):
        latencies["ray_call"] += _sequential(lambda: ray.get(plain.call.remote(payload)), CALLS // ROUNDS)
        latencies["compiled_graph"] += _sequential(lambda: ray.get(graph.execute(payload)), CALLS // ROUNDS)
    graph.teardown()
    for kind, samples in latencies.items():
        figures[f"one_actor_{kind}_per_s"] = round(len(samples) / sum(samples), 1)
        figures.update({f"one_actor_{kind}_{k}": v for k, v in latency_summary(samples).items()})
    figures["one_actor_graph_speedup"] = round(
        statistics.median(latencies["ray_call"]) / statistics.median(latencies["compiled_graph"]), 2
    )
    print(figures, flush=True)  # the spread part below takes long on a loaded host

    # ACTORS actors, one graph each (asyncio executes), eight callers: the topology of live stories.
    plain_actors = [Echo.remote() for _ in range(ACTORS)]
    graph_actors = [Echo.remote() for _ in range(ACTORS)]
    ray.get([a.call.remote(payload) for a in plain_actors + graph_actors])

    async def measure() -> dict[str, float]:
        started = time.perf_counter()
        graphs = [_compile(a, enable_asyncio=True) for a in graph_actors]
        compile_s = (time.perf_counter() - started) / ACTORS

        async def ray_call(n: int) -> None:
            await plain_actors[n].call.remote(payload)

        async def graph_call(n: int) -> None:
            await (await graphs[n].execute_async(payload))

        seconds: dict[str, float] = {"ray_call": 0.0, "compiled_graph": 0.0}
        for call in (ray_call, graph_call):  # warm-up
            await _spread(call, 400)
        for _ in range(ROUNDS):
            seconds["ray_call"] += await _spread(ray_call, CALLS // ROUNDS)
            seconds["compiled_graph"] += await _spread(graph_call, CALLS // ROUNDS)
        for g in graphs:
            g.teardown()
        calls = CALLS // ROUNDS // SUBMITTERS * SUBMITTERS * ROUNDS
        return {
            "spread_ray_call_per_s": round(calls / seconds["ray_call"], 1),
            "spread_compiled_graph_per_s": round(calls / seconds["compiled_graph"], 1),
            "spread_graph_speedup": round(seconds["ray_call"] / seconds["compiled_graph"], 2),
            "compile_ms_per_graph": round(compile_s * 1000, 1),
        }

    figures.update(asyncio.run(measure()))
    for actor in (plain, graphed, *plain_actors, *graph_actors):
        ray.kill(actor)
    return figures
