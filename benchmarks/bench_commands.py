"""Commands through FleetClient (50 warm stories, concurrent submitters) vs a no-op Ray actor call and a
bare js.publish, all measured in this run with the same concurrency and durability setting. The commands
and these baselines take turns in ROUNDS rounds, so that each sees the same drift of the host.

The no-op call is measured against one actor, as an async actor (the issue's baseline: its story actor is
an async actor) and as a synchronous one (what the story actors are now, and Ray's cheapest call), and
spread over 50 actors (the commands' topology: one process per story, with the story actors' options).
A composite baseline spreads over 50 actors a call that does nothing but one conditional js.publish with
the story store's headers: what a per-story actor costs before any of our code runs.

The same commands also run with metrics off (FLEET_METRICS_ENABLED=0, in the story actors and this
driver) and with tracing on (spans made and batched, then dropped), in the same interleaved rounds:
``metrics_overhead`` and ``tracing_overhead`` are the share of the command rate they cost."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from typing import Any

import nats
import ray

from benchmarks.harness import BenchContext, latency_summary
from fleet_actors import FleetClient
from fleet_actors.actors.naming import story_actor_name
from fleet_actors.actors.story_actor import live_story_handle, story_actor_options
from fleet_actors.adapters.jetstream.event_store import H_EXPECTED_SEQ, H_EXPECTED_SUBJECT, H_MSG_ID
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import set_enabled as set_metrics_enabled

STORIES = 50
SUBMITTERS = 8
COMMANDS = 2000
#: the commands and their one-actor and publish baselines take turns, COMMANDS / ROUNDS each
ROUNDS = 8


@ray.remote(num_cpus=0)
class NoOp:
    async def call(self, payload: Any) -> Any:
        return payload


@ray.remote(num_cpus=0)
class SyncNoOp:
    """Like a story actor to Ray: synchronous (see StoryActor)."""

    def call(self, payload: Any) -> Any:
        return payload


@ray.remote(num_cpus=0)
class Publisher:
    """A story actor reduced to its append: one js.publish conditional on the subject's last sequence."""

    def __init__(self, nats_url: str, subject: str) -> None:
        self._loop = asyncio.SelectorEventLoop()  # as the story actor's
        self._subject = subject
        self._last = 0
        self._js = self._loop.run_until_complete(_jetstream(nats_url))

    def call(self, payload: str) -> int:
        headers = {
            H_EXPECTED_SEQ: str(self._last),
            H_EXPECTED_SUBJECT: self._subject + ".>",
            H_MSG_ID: uuid.uuid4().hex,
        }
        ack = self._loop.run_until_complete(self._js.publish(self._subject + ".x", payload.encode(), headers=headers))
        self._last = ack.seq
        return ack.seq


@ray.remote(num_cpus=0)
class InstrumentationCost:
    """What the story actor records per command, alone, in an actor (ray.util.metrics), repeated."""

    def measure(self, repeats: int, traced: bool) -> float:
        return _instrumentation_us(repeats, traced)


def _instrumentation_us(repeats: int, traced: bool) -> float:
    """Microseconds per command of the metrics (and with ``traced`` the spans) of one command's path:
    the client's histogram, the actor's counter and histograms, the log context, the spans."""
    from fleet_actors.actors.story_actor import _observe_command
    from fleet_actors.application.messages import CommandRequest
    from fleet_actors.client import _observe_client, _traced
    from fleet_actors.domain.commands import RecordSummary
    from fleet_actors.domain.results import CommandResult
    from fleet_actors.observability import logs
    from fleet_actors.observability.metrics import metrics

    if traced:
        tracing.use_exporter(tracing._discarding_exporter(), batch=True)
    request = CommandRequest("bench-story", RecordSummary("note"), "command-1")
    result = CommandResult("bench-story", 2, ("e",), "command-1")
    m = metrics()
    started = time.perf_counter()
    for _ in range(repeats):
        with tracing.client_span("bench-story", "RecordSummary"):
            sent = _traced(request)
            with tracing.command_span(sent), logs.bind(story_id=sent.story_id, command_id=sent.command_id):
                with tracing.span("jetstream.append"):
                    tracing.inject_headers({})
                    m.append_duration.observe(0.001, "ok")
                _observe_command(sent, result, None, 0.002)
            _observe_client(sent, result, None, started)
    seconds = time.perf_counter() - started
    if traced:
        tracing.disable()
    return seconds / repeats * 1e6


async def _jetstream(nats_url: str) -> Any:
    return (await nats.connect(nats_url)).jetstream()


def _overhead_by_round(without: list[float], with_: list[float]) -> str:
    """min / median / max over the rounds of 1 - (time without) / (time with)."""
    ratios = sorted(1 - w / c for w, c in zip(without, with_, strict=True))
    return " / ".join(f"{r:.3f}" for r in (ratios[0], statistics.median(ratios), ratios[-1]))


async def _drive(submit, total: int, submitters: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    per_worker = total // submitters

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(per_worker):
            started = time.perf_counter()
            await submit(rng, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(submitters)))
    return time.perf_counter() - started, latencies


def run(ctx: BenchContext) -> dict[str, Any]:
    client = FleetClient(ctx.settings)
    run_id = uuid.uuid4().hex[:6]
    stories = [f"bench-{run_id}-{n}" for n in range(STORIES)]
    for story_id in stories:
        client.create_story(story_id, "benchmark story")
        client.create_subtask(story_id, "T1", "work", "DEV")
    time.sleep(5)  # worker start-up settles (as before each spread baseline)

    async def command(rng: random.Random, i: int) -> None:
        await client.aio.record_summary(rng.choice(stories), f"progress note {i}")

    async def raw_ray(rng: random.Random, i: int) -> None:
        await noop.call.remote(f"progress note {i}")

    async def raw_ray_sync(rng: random.Random, i: int) -> None:
        await sync_noop.call.remote(f"progress note {i}")

    async def raw_publish(rng: random.Random, i: int) -> None:
        await js.publish(f"rawbench.{rng.randrange(STORIES)}", b"x" * 90)

    handles = [live_story_handle(story_id, ctx.settings) for story_id in stories]
    observing: dict[str, Any] = {"kind": None}

    def observe(kind: str) -> None:
        """Metrics and traces as ``kind`` measures them, in the story actors and in this driver."""
        wanted = {"command_no_metrics": (False, ""), "command_traced": (True, "discard")}.get(kind, (True, ""))
        if observing["kind"] == wanted:
            return
        observing["kind"] = wanted
        ray.get([h.configure_observability.remote(*wanted) for h in handles if h is not None])
        set_metrics_enabled(wanted[0])
        tracing.disable()
        tracing.configure(ctx.settings.replace(traces_exporter=wanted[1]))

    noop, sync_noop = NoOp.remote(), SyncNoOp.remote()
    ray.get([noop.call.remote(None), sync_noop.call.remote(None)])

    async def measure() -> dict[str, Any]:
        nonlocal js
        nc = await nats.connect(ctx.settings.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="RAWBENCH", subjects=["rawbench.>"])
        kinds = {
            "command": command,
            "raw_ray": raw_ray,
            "raw_ray_sync": raw_ray_sync,
            "raw_publish": raw_publish,
            # the same commands without metrics, and with tracing on (spans made, batched, dropped)
            "command_no_metrics": command,
            "command_traced": command,
        }
        for kind, submit in kinds.items():
            observe(kind)
            await _drive(submit, 200, SUBMITTERS)  # warm-up
        # Interleaved rounds: this host's speed drifts by a quarter within minutes, so the commands
        # and their baselines take turns and each sees the same drift.
        seconds = {kind: [] for kind in kinds}
        latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(ROUNDS):
            for kind, submit in kinds.items():
                observe(kind)
                elapsed, samples = await _drive(submit, COMMANDS // ROUNDS, SUBMITTERS)
                seconds[kind].append(elapsed)
                latencies[kind].extend(samples)
        await nc.close()
        observe("command")
        cmd, ray_, ray_sync, pub, cmd_bare, cmd_traced = (sum(seconds[kind]) for kind in kinds)
        round_ratios = sorted(r / c for r, c in zip(seconds["raw_ray"], seconds["command"], strict=True))
        return {
            "commands_per_s": round(COMMANDS / cmd, 1),
            **{f"command_{k}": v for k, v in latency_summary(latencies["command"]).items()},
            "raw_ray_call_per_s": round(COMMANDS / ray_, 1),
            **{f"raw_ray_{k}": v for k, v in latency_summary(latencies["raw_ray"]).items()},
            "raw_ray_sync_call_per_s": round(COMMANDS / ray_sync, 1),
            **{f"raw_ray_sync_{k}": v for k, v in latency_summary(latencies["raw_ray_sync"]).items()},
            "raw_js_publish_per_s": round(COMMANDS / pub, 1),
            **{f"raw_publish_{k}": v for k, v in latency_summary(latencies["raw_publish"]).items()},
            "ratio_to_raw_ray_call": round(ray_ / cmd, 3),
            "ratio_to_raw_ray_call_by_round": " / ".join(
                f"{r:.2f}" for r in (round_ratios[0], statistics.median(round_ratios), round_ratios[-1])
            ),
            "ratio_to_raw_ray_sync_call": round(ray_sync / cmd, 3),
            "ratio_to_raw_js_publish": round(pub / cmd, 3),
            "commands_no_metrics_per_s": round(COMMANDS / cmd_bare, 1),
            "commands_traced_per_s": round(COMMANDS / cmd_traced, 1),
            # the share of the command rate that metrics cost (on vs off), and tracing on top of them
            "metrics_overhead": round(1 - cmd_bare / cmd, 3),
            "metrics_overhead_by_round": _overhead_by_round(seconds["command_no_metrics"], seconds["command"]),
            "tracing_overhead": round(1 - cmd / cmd_traced, 3),
            "tracing_overhead_by_round": _overhead_by_round(seconds["command"], seconds["command_traced"]),
        }

    js = None
    figures = {"stories": STORIES, "submitters": SUBMITTERS, "commands": COMMANDS}
    figures.update(asyncio.run(measure()))
    # The instrumentation alone, without the noise of a shared host: its cost per command against the
    # CPU a command takes here (both cores' time divided by the command rate).
    cost = InstrumentationCost.remote()
    metrics_us = min(ray.get([cost.measure.remote(20_000, False) for _ in range(3)]))
    traced_us = min(ray.get([cost.measure.remote(5_000, True) for _ in range(3)]))
    ray.kill(cost)
    cpu_per_command_us = 2 * 1e6 / figures["commands_per_s"]
    figures["metrics_us_per_command"] = round(metrics_us, 1)
    figures["metrics_share_of_command_cpu"] = round(metrics_us / cpu_per_command_us, 4)
    figures["tracing_us_per_command"] = round(traced_us - metrics_us, 1)
    figures["tracing_share_of_command_cpu"] = round((traced_us - metrics_us) / cpu_per_command_us, 4)

    # A cold story: its actor passivated, the next call re-creates it and replays the log.
    cold = stories[0]
    history = len(client.history(cold))
    handle = ray.get_actor(story_actor_name(cold), namespace=ctx.settings.ray_namespace)
    with contextlib.suppress(ray.exceptions.RayActorError):
        ray.get(handle.passivate.remote())
    time.sleep(1.0)
    started = time.perf_counter()
    client.get_story(cold)
    figures["cold_activation_ms"] = round((time.perf_counter() - started) * 1000, 1)
    figures["cold_story_events"] = history

    # The spread baselines (the commands' topology: one process per story), with the story actors
    # passivated first so the machine runs as many processes as during the commands.
    for handle in filter(None, (live_story_handle(story_id, ctx.settings) for story_id in stories)):
        with contextlib.suppress(ray.exceptions.RayActorError):
            ray.get(handle.passivate.remote())
    story_options = story_actor_options(ctx.settings)
    for name, make in (
        ("raw_ray_call_50_actors", lambda n: SyncNoOp.options(**story_options).remote()),
        (
            "actor_publish_50_actors",
            lambda n: Publisher.options(**story_options).remote(ctx.settings.nats_url, f"rawbench.actor.{run_id}.{n}"),
        ),
    ):
        actors = [make(n) for n in range(STORIES)]
        ray.get([a.call.remote("warm-up") for a in actors])
        time.sleep(5)  # worker start-up settles

        async def spread_call(rng: random.Random, i: int, actors: list[Any] = actors) -> None:
            await rng.choice(actors).call.remote(f"progress note {i}")

        seconds, _ = asyncio.run(_drive(spread_call, COMMANDS, SUBMITTERS))
        figures[f"{name}_per_s"] = round(COMMANDS / seconds, 1)
        figures[f"ratio_to_{name}"] = round(figures["commands_per_s"] * seconds / COMMANDS, 3)
        for actor in actors:
            ray.kill(actor)
        time.sleep(2)
    ray.kill(noop)
    ray.kill(sync_noop)

    return figures
