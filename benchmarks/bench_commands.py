"""Commands through FleetClient (50 warm stories, concurrent submitters) against the floor of a
command, measured in this run in alternating rounds: **the floor** is 50 synchronous Ray actors with
the story actors' options, alive beside the story actors for the whole run, whose call does nothing
but one conditional, fsynced js.publish with a message id and an event's bytes (a story actor
reduced to its append); ``ratio_to_floor`` is the commands' rate over it. The same rounds measure a
no-op call to one async actor and to one synchronous actor, and a bare js.publish from the driver.

``cpu_ms_per_command`` and ``cpu_ms_per_floor_call`` account the CPU of every process of the run
(from /proc, benchmarks/process_cpu.py) over the rounds of each, per call: the driver, the story
actors, the floor actors (idle during the commands' rounds, and the story actors during the
floor's), nats-server, Ray's raylet, gcs_server and agents.

The same commands also run with metrics off (FLEET_METRICS_ENABLED=0, in the story actors and this
driver) and with tracing on (spans made and batched, then dropped), in the same interleaved rounds:
``metrics_overhead`` and ``tracing_overhead`` are the share of the command rate they cost.
Sizes: BENCH_COMMAND_STORIES (50), BENCH_COMMANDS (2,000), BENCH_COMMAND_SUBMITTERS (8)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import nats
import ray

from benchmarks.harness import BenchContext, latency_summary
from benchmarks.process_cpu import cpu_by_kind, tree_cpu
from fleet_actors import FleetClient
from fleet_actors.actors.naming import story_actor_name
from fleet_actors.actors.story_actor import live_story_handle, story_actor_options
from fleet_actors.adapters.jetstream.event_store import H_EXPECTED_SEQ, H_EXPECTED_SUBJECT, H_MSG_ID
from fleet_actors.codec.events import encode_event
from fleet_actors.domain.events import EventEnvelope, SummaryRecorded
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import set_enabled as set_metrics_enabled

STORIES = int(os.environ.get("BENCH_COMMAND_STORIES", "50"))
SUBMITTERS = int(os.environ.get("BENCH_COMMAND_SUBMITTERS", "8"))
COMMANDS = int(os.environ.get("BENCH_COMMANDS", "2000"))
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
class Floor:
    """The floor of a command: a synchronous actor (as the story actors, with their options) whose call
    does nothing but one js.publish conditional on the subject's last sequence, with a message id and
    an event's bytes, through nats-py on a loop that runs only during calls (as the story actor's)."""

    def __init__(self, nats_url: str, subject: str) -> None:
        self._loop = asyncio.SelectorEventLoop()  # as the story actor's
        self._subject = subject
        self._last = 0
        self._js = self._loop.run_until_complete(_jetstream(nats_url))

    def call(self, payload: bytes) -> int:
        headers = {
            H_EXPECTED_SEQ: str(self._last),
            H_EXPECTED_SUBJECT: self._subject + ".>",
            H_MSG_ID: uuid.uuid4().hex,
        }
        ack = self._loop.run_until_complete(self._js.publish(self._subject + ".x", payload, headers=headers))
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


def _ratio_by_round(baseline: list[float], measured: list[float]) -> str:
    """min / median / max over the rounds of the measured rate over the baseline's."""
    ratios = sorted(b / m for b, m in zip(baseline, measured, strict=True))
    return " / ".join(f"{r:.2f}" for r in (ratios[0], statistics.median(ratios), ratios[-1]))


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


def _event_bytes() -> bytes:
    """What a record_summary command appends: one encoded event, as the floor publishes it."""
    envelope = EventEnvelope(
        uuid.uuid4().hex, "bench-story", 3, datetime.now(UTC), SummaryRecorded("progress note 0"), uuid.uuid4().hex
    )
    return encode_event(envelope)


def _cpu_per_call(spent: dict[str, float], calls: int) -> dict[str, float]:
    """Milliseconds of CPU per call by kind of process, the largest first, and their total."""
    per_call = {kind: seconds * 1000 / calls for kind, seconds in spent.items()}
    shown = {kind: round(ms, 2) for kind, ms in sorted(per_call.items(), key=lambda kv: -kv[1]) if ms >= 0.01}
    return {"all processes": round(sum(per_call.values()), 2), **shown}


def run(ctx: BenchContext) -> dict[str, Any]:
    # Warm stories throughout: on a loaded host, creating the actors can take longer than the idle
    # period after which a story actor passivates.
    settings = ctx.settings.replace(actor_idle_seconds=3600.0)
    client = FleetClient(settings)
    run_id = uuid.uuid4().hex[:6]
    stories = [f"bench-{run_id}-{n}" for n in range(STORIES)]
    for story_id in stories:
        client.create_story(story_id, "benchmark story")
        client.create_subtask(story_id, "T1", "work", "DEV")
    event = _event_bytes()
    story_options = story_actor_options(settings)

    async def command(rng: random.Random, i: int) -> None:
        await client.aio.record_summary(rng.choice(stories), f"progress note {i}")

    async def floor_call(rng: random.Random, i: int) -> None:
        await rng.choice(floor).call.remote(event)

    async def raw_ray(rng: random.Random, i: int) -> None:
        await noop.call.remote(f"progress note {i}")

    async def raw_ray_sync(rng: random.Random, i: int) -> None:
        await sync_noop.call.remote(f"progress note {i}")

    async def raw_publish(rng: random.Random, i: int) -> None:
        await js.publish(f"rawbench.{rng.randrange(STORIES)}", event)

    handles = [live_story_handle(story_id, settings) for story_id in stories]
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
        tracing.configure(settings.replace(traces_exporter=wanted[1]))

    noop, sync_noop = NoOp.remote(), SyncNoOp.remote()
    ray.get([noop.call.remote(None), sync_noop.call.remote(None)])
    floor: list[Any] = []

    async def measure() -> dict[str, Any]:
        nonlocal js
        nc = await nats.connect(settings.nats_url)
        js = nc.jetstream()
        await js.add_stream(name="RAWBENCH", subjects=["rawbench.>"])
        # The floor lives beside the story actors for the whole run: both kinds of rounds see 100
        # actor processes, half of them idle.
        floor.extend(
            Floor.options(**story_options).remote(settings.nats_url, f"rawbench.floor.{run_id}.{n}")
            for n in range(STORIES)
        )
        await asyncio.gather(*(actor.call.remote(event) for actor in floor))
        await asyncio.sleep(5)  # worker start-up settles
        kinds = {
            "command": command,
            "floor": floor_call,
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
        seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
        latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, dict[str, float]] = {"command": {}, "floor": {}}
        for _ in range(ROUNDS):
            for kind, submit in kinds.items():
                observe(kind)
                before = tree_cpu()
                elapsed, samples = await _drive(submit, COMMANDS // ROUNDS, SUBMITTERS)
                if kind in cpu:
                    for process, spent in cpu_by_kind(before, tree_cpu()).items():
                        cpu[kind][process] = cpu[kind].get(process, 0.0) + spent
                seconds[kind].append(elapsed)
                latencies[kind].extend(samples)
        await nc.close()
        observe("command")
        total = {kind: sum(times) for kind, times in seconds.items()}
        cmd = total["command"]
        return {
            "commands_per_s": round(COMMANDS / cmd, 1),
            **{f"command_{k}": v for k, v in latency_summary(latencies["command"]).items()},
            "floor_calls_per_s": round(COMMANDS / total["floor"], 1),
            **{f"floor_{k}": v for k, v in latency_summary(latencies["floor"]).items()},
            "ratio_to_floor": round(total["floor"] / cmd, 3),
            "ratio_to_floor_by_round": _ratio_by_round(seconds["floor"], seconds["command"]),
            "cpu_ms_per_command": _cpu_per_call(cpu["command"], COMMANDS),
            "cpu_ms_per_floor_call": _cpu_per_call(cpu["floor"], COMMANDS),
            "raw_ray_call_per_s": round(COMMANDS / total["raw_ray"], 1),
            **{f"raw_ray_{k}": v for k, v in latency_summary(latencies["raw_ray"]).items()},
            "raw_ray_sync_call_per_s": round(COMMANDS / total["raw_ray_sync"], 1),
            **{f"raw_ray_sync_{k}": v for k, v in latency_summary(latencies["raw_ray_sync"]).items()},
            "raw_js_publish_per_s": round(COMMANDS / total["raw_publish"], 1),
            **{f"raw_publish_{k}": v for k, v in latency_summary(latencies["raw_publish"]).items()},
            "ratio_to_raw_ray_call": round(total["raw_ray"] / cmd, 3),
            "ratio_to_raw_ray_call_by_round": _ratio_by_round(seconds["raw_ray"], seconds["command"]),
            "ratio_to_raw_ray_sync_call": round(total["raw_ray_sync"] / cmd, 3),
            "ratio_to_raw_js_publish": round(total["raw_publish"] / cmd, 3),
            "commands_no_metrics_per_s": round(COMMANDS / total["command_no_metrics"], 1),
            "commands_traced_per_s": round(COMMANDS / total["command_traced"], 1),
            # the share of the command rate that metrics cost (on vs off), and tracing on top of them
            "metrics_overhead": round(1 - total["command_no_metrics"] / cmd, 3),
            "metrics_overhead_by_round": _overhead_by_round(seconds["command_no_metrics"], seconds["command"]),
            "tracing_overhead": round(1 - cmd / total["command_traced"], 3),
            "tracing_overhead_by_round": _overhead_by_round(seconds["command"], seconds["command_traced"]),
        }

    js = None
    figures: dict[str, Any] = {"stories": STORIES, "submitters": SUBMITTERS, "commands": COMMANDS}
    figures.update(asyncio.run(measure()))
    for actor in floor:
        ray.kill(actor)
    # The instrumentation alone, without the noise of a shared host: its cost per command against the
    # CPU a command takes here (all processes).
    cost = InstrumentationCost.remote()
    metrics_us = min(ray.get([cost.measure.remote(20_000, False) for _ in range(3)]))
    traced_us = min(ray.get([cost.measure.remote(5_000, True) for _ in range(3)]))
    ray.kill(cost)
    cpu_per_command_us = figures["cpu_ms_per_command"]["all processes"] * 1000
    figures["metrics_us_per_command"] = round(metrics_us, 1)
    figures["metrics_share_of_command_cpu"] = round(metrics_us / cpu_per_command_us, 4)
    figures["tracing_us_per_command"] = round(traced_us - metrics_us, 1)
    figures["tracing_share_of_command_cpu"] = round((traced_us - metrics_us) / cpu_per_command_us, 4)

    # A cold story: its actor passivated, the next call re-creates it and replays the log.
    cold = stories[0]
    history = len(client.history(cold))
    handle = ray.get_actor(story_actor_name(cold), namespace=settings.ray_namespace)
    with contextlib.suppress(ray.exceptions.RayActorError):
        ray.get(handle.passivate.remote())
    time.sleep(1.0)
    through_actor = FleetClient(settings.replace(direct_reads=False))  # not the client's own copy
    started = time.perf_counter()
    through_actor.get_story(cold)
    figures["cold_activation_ms"] = round((time.perf_counter() - started) * 1000, 1)
    figures["cold_story_events"] = history
    ray.kill(noop)
    ray.kill(sync_noop)
    return figures
