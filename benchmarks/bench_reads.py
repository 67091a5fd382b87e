"""Reads of one 10,000-event story, in alternating rounds next to raw reads of the same events:
``history`` (in the caller, and through the story actor as before) against an ordered consumer and
batched direct gets (with and without headers, the latter on a plain nats-py connection), and our
own read without decoding; ``get_story`` of the live story (unchanged, and right
after another writer appended); temporal reads with snapshots, from the client and through the
gateway's GetContextAtTime.

Sizes: BENCH_READS_EVENTS (10000), BENCH_READS_ROUNDS (5), BENCH_READS_HISTORY_ROUNDS (15),
BENCH_READS_CALLS (60 per round)."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from benchmarks.harness import BenchContext, latency_summary
from fleet_actors import FleetClient
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.direct_get import read_by_subject, read_payloads_by_subject
from fleet_actors.adapters.jetstream.nats_client import FleetNatsClient
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.codec.collector import freeze_long_lived
from fleet_actors.codec.events import decode_event_with_protobuf, decode_events
from fleet_actors.codec.state import decode_snapshot, decode_snapshot_with_protobuf
from fleet_actors.direct_reads import DirectReads
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import StateBuilder
from fleet_actors.gateway import gateway_in_thread
from fleet_actors.loadgen.histories import story_history
from fleet_actors.ports.snapshot_store import Snapshot
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from fleet_actors.proto import state_pb2

EVENTS = int(os.environ.get("BENCH_READS_EVENTS", "10000"))
ROUNDS = int(os.environ.get("BENCH_READS_ROUNDS", "5"))
#: rounds of the history reads (each ~50 ms): a round's ratio varied 0.74-1.11 within one run
HISTORY_ROUNDS = int(os.environ.get("BENCH_READS_HISTORY_ROUNDS", "15"))
CALLS = int(os.environ.get("BENCH_READS_CALLS", "60"))
SNAPSHOT_EVERY = 100


async def _fill(store: JetStreamEventStore, snapshots: JetStreamSnapshotStore, story_id: str) -> list[Any]:
    """The story's events appended directly (batches of 100), a snapshot after each batch as a story
    actor takes them (the snapshot stream keeps the last 20)."""
    history = story_history(story_id, EVENTS, start=datetime(2026, 1, 1, tzinfo=UTC))
    head, builder = 0, StateBuilder(StoryState(story_id))
    for first in range(0, EVENTS, SNAPSHOT_EVERY):
        chunk = history[first : first + SNAPSHOT_EVERY]
        head = (await store.append(story_id, head, chunk)).last_sequence
        for envelope in chunk:
            builder.add(envelope)
        await snapshots.save(Snapshot(builder.state(), head))
    return history


class RawReads:
    """The fastest reads nats-py offers of the same events, undecoded. The batched direct gets
    without headers run on a plain nats-py connection of their own (a subscription callback per
    message); ``ours_undecoded`` is the same read through our client's sink (the frame scanner),
    without decoding: what the history's read costs apart from decoding."""

    def __init__(self, store: JetStreamEventStore, plain: Any, settings: Any, story_id: str, head: int) -> None:
        self.nc, self.plain, self.settings, self.story_id, self.head = store.connection, plain, settings, story_id, head
        self.filter = settings.story_filter(story_id)

    async def ordered_consumer(self) -> int:
        done, count = asyncio.Event(), 0

        async def on_message(msg: Any) -> None:
            nonlocal count
            count += 1
            if msg.metadata.num_pending == 0:
                done.set()

        sub = await self.nc.jetstream().subscribe(
            self.filter, ordered_consumer=True, cb=on_message, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        await done.wait()
        await sub.unsubscribe()
        return count

    async def direct_gets(self) -> int:
        count = 0
        async for _ in read_by_subject(
            self.nc, self.settings.stream_name, self.filter, 1, self.head, timeout=5.0, what="raw"
        ):
            count += 1
        return count

    async def direct_gets_no_headers(self) -> int:
        count = 0
        async for _, payloads in self._batches(self.plain):
            count += len(payloads)
        return count

    async def ours_undecoded(self) -> int:
        count = 0
        async for _, payloads in self._batches(self.nc):
            count += len(payloads)
        return count

    async def payloads(self) -> list[bytes]:
        """The same read as :meth:`ours_undecoded`, the payloads kept (to time decoding apart)."""
        out: list[bytes] = []
        async for _, payloads in self._batches(self.nc):
            out += payloads
        return out

    def _batches(self, connection: Any) -> Any:
        return read_payloads_by_subject(
            connection, self.settings.stream_name, self.filter, 1, self.head, timeout=5.0, what="raw"
        )


def _timed(call: Any, cpu: list[float] | None = None) -> float:
    """Wall-clock seconds of ``call()``; with ``cpu``, this process's CPU seconds appended to it."""
    started_cpu = time.process_time()
    started = time.perf_counter()
    call()
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - started_cpu)
    return elapsed


def run(ctx: BenchContext) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    settings = ctx.settings.replace(stream_name=f"READS{tag.upper()}", subject_prefix=f"rd{tag}.events")
    story_id = f"big-{tag}"
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(JetStreamEventStore.connect(settings))
    snapshots = JetStreamSnapshotStore(store.connection, settings)
    loop.run_until_complete(snapshots.ensure_stream())
    history = loop.run_until_complete(_fill(store, snapshots, story_id))
    head = loop.run_until_complete(store.last_sequence(story_id))
    plain = loop.run_until_complete(
        nats.connect(settings.nats_url, user=settings.nats_user or None, password=settings.nats_password or None)
    )
    assert not isinstance(plain, FleetNatsClient)
    raw = RawReads(store, plain, settings, story_id, head)
    client = FleetClient(settings)
    through_actor = FleetClient(settings.replace(direct_reads=False))
    in_loop = DirectReads(settings)
    figures: dict[str, Any] = {
        "events": EVENTS, "rounds": ROUNDS, "history_rounds": HISTORY_ROUNDS, "load_before": os.getloadavg()[0],
    }  # fmt: skip
    try:
        assert client.get_story(story_id).version == EVENTS  # activates the story actor
        assert client.history(story_id) == history  # the same events, decoded
        # Only their timestamps are needed from here on: the 10,000 envelopes (~60,000 objects), held
        # for the whole run, lengthened every full collection in this process, which also hosts the
        # gateway below; a gateway process holds no such list.
        timestamps = [envelope.timestamp for envelope in history]
        del history
        # -- history against raw reads, alternating rounds ------------------------------------------
        samples: dict[str, list[float]] = {
            k: []
            for k in ("ordered", "direct", "direct_nohdr", "ours_undecoded", "ours", "ours_in_callers_loop", "actor")
        }
        #: this process's CPU (every thread: the client's reads run on its own loop thread) per read
        cpu: dict[str, list[float]] = {"direct_nohdr": [], "ours_undecoded": [], "ours": []}
        frees: list[float] = []
        held: list[Any] = []

        def ours() -> None:
            # Timed until the events are the caller's; freeing them afterwards (~60,000 objects, about
            # 3 ms) is the caller's, timed apart (the raw reads free their undecoded messages as they go).
            samples["ours"].append(_timed(lambda: held.append(client.history(story_id)), cpu["ours"]))
            _check(len(held[0]))
            frees.append(_timed(held.clear))

        def in_the_callers_loop() -> None:
            # The same read on this thread's loop, as an asyncio caller makes it (AsyncFleetClient):
            # what the synchronous client's own loop thread adds
            read = in_loop.history(story_id, 1, None)
            samples["ours_in_callers_loop"].append(_timed(lambda: held.append(loop.run_until_complete(read))))
            _check(len(held[0]))
            held.clear()

        def through_the_actor() -> None:
            samples["actor"].append(_timed(lambda: held.append(through_actor.history(story_id))))
            _check(len(held[0]))
            held.clear()

        def raw_read(name: str, read: Any) -> Callable[[], None]:
            return lambda: samples[name].append(_timed(lambda: _check(loop.run_until_complete(read())), cpu.get(name)))

        reads = [
            raw_read("ordered", raw.ordered_consumer),
            raw_read("direct", raw.direct_gets),
            raw_read("direct_nohdr", raw.direct_gets_no_headers),
            raw_read("ours_undecoded", raw.ours_undecoded),
            ours,
            in_the_callers_loop,
            through_the_actor,
        ]
        for round_ in range(HISTORY_ROUNDS):
            # Each round starts one read later, so that no read always follows the same one (the
            # server may still be busy with the read before) and every read takes every place.
            for read in reads[round_ % len(reads) :] + reads[: round_ % len(reads)]:
                read()
        medians = {name: statistics.median(values) for name, values in samples.items()}
        for name, value in medians.items():
            figures[f"history_{name}_ms"] = round(value * 1000, 1)
        figures["history_result_free_ms"] = round(statistics.median(frees) * 1000, 1)
        for name in ("direct_nohdr", "ours_undecoded", "ours"):  # the spread (some rounds stall one read or the other)
            figures[f"history_{name}_per_round_ms"] = [round(v * 1000, 1) for v in samples[name]]
            figures[f"history_{name}_cpu_per_round_ms"] = [round(v * 1000, 1) for v in cpu[name]]
        figures["history_ratio_per_round_vs_nohdr"] = [
            round(a / b, 2) for a, b in zip(samples["direct_nohdr"], samples["ours"], strict=True)
        ]
        for name, values in cpu.items():
            figures[f"history_{name}_cpu_ms"] = round(statistics.median(values) * 1000, 1)
        figures["history_cpu_ratio_vs_nohdr"] = round(
            statistics.median(cpu["direct_nohdr"]) / statistics.median(cpu["ours"]), 3
        )
        named = min(medians["ordered"], medians["direct"])  # the two reads the issue names
        fastest = min(named, medians["direct_nohdr"])
        figures["history_ratio_vs_fastest_raw"] = round(fastest / medians["ours"], 3)
        # the same read without decoding, through our client: what decoding costs on top of the read
        figures["history_ratio_vs_ours_undecoded"] = round(medians["ours_undecoded"] / medians["ours"], 3)
        figures["history_undecoded_ratio_vs_fastest_raw"] = round(fastest / medians["ours_undecoded"], 3)
        # paired: each round's two reads ran next to each other, under the same conditions
        per_round = figures["history_ratio_per_round_vs_nohdr"]
        figures["history_ratio_vs_nohdr_median_of_rounds"] = statistics.median(per_round)
        figures["history_in_callers_loop_ratio_vs_fastest_raw"] = round(fastest / medians["ours_in_callers_loop"], 3)
        figures["history_ratio_vs_ordered_or_headered_direct"] = round(named / medians["ours"], 3)
        figures["history_and_free_ratio_vs_fastest_raw"] = round(
            fastest / (medians["ours"] + figures["history_result_free_ms"] / 1000), 3
        )
        figures["history_actor_path_ratio_vs_fastest_raw"] = round(fastest / medians["actor"], 3)
        figures.update(_event_decode(loop.run_until_complete(raw.payloads())))
        # -- get_story of the live story --------------------------------------------------------------
        unchanged, after_append, actor_path = [], [], []
        writer_head = head
        for _ in range(ROUNDS):
            for _ in range(CALLS):
                unchanged.append(_timed(lambda: client.get_story(story_id)))
            for i in range(CALLS // 4):
                # Another writer (not this client's story actor) appends one event first.
                envelope = _next_event(client.get_story(story_id), len(after_append) + i)
                writer_head = loop.run_until_complete(store.append(story_id, writer_head, [envelope])).last_sequence
                after_append.append(_timed(lambda: client.get_story(story_id)))
            for _ in range(CALLS // 4):
                actor_path.append(_timed(lambda: through_actor.get_story(story_id)))
        figures.update({f"get_story_{k}": v for k, v in latency_summary(unchanged).items()})
        figures.update({f"get_story_after_append_{k}": v for k, v in latency_summary(after_append).items()})
        figures.update({f"get_story_actor_path_{k}": v for k, v in latency_summary(actor_path).items()})
        # -- temporal reads with snapshots ---------------------------------------------------------------
        # Points a kept snapshot reaches (the stream keeps each story's newest 20, one per 100 events:
        # v8,100-v10,000; until 2026-12-02 afternoon the range began at v8,001, and the 1 % of points
        # below v8,100 replayed the story from its start), and points anywhere in the story (older
        # ones replay from the story's start).
        rng = random.Random(7)
        oldest_kept = max(1, EVENTS - (settings.snapshot_keep - 1) * SNAPSHOT_EVERY)
        versions = [rng.randint(oldest_kept, EVENTS) for _ in range(CALLS * ROUNDS)]
        anywhere = [rng.randint(1, EVENTS) for _ in range(CALLS)]
        cpu_at_version: list[float] = []
        at_version = [_timed(lambda v=v: client.get_story_at(story_id, v), cpu_at_version) for v in versions]
        stamps = [timestamps[v - 1] for v in versions[:CALLS]]
        cpu_at_time: list[float] = []
        at_time = [_timed(lambda t=t: client.get_story_at(story_id, t), cpu_at_time) for t in stamps]
        at_any = [_timed(lambda v=v: client.get_story_at(story_id, v)) for v in anywhere]
        actor_temporal = [_timed(lambda v=v: through_actor.get_story_at(story_id, v)) for v in versions[: CALLS // 2]]
        figures.update({f"state_at_version_{k}": v for k, v in latency_summary(at_version).items()})
        figures.update({f"state_at_time_{k}": v for k, v in latency_summary(at_time).items()})
        # This process's CPU per read: what a call costs when it does not wait for a core (the
        # machine is shared; a loaded one stretches the wall-clock tail, not this)
        figures.update({f"state_at_version_cpu_{k}": v for k, v in latency_summary(cpu_at_version).items()})
        figures.update({f"state_at_time_cpu_{k}": v for k, v in latency_summary(cpu_at_time).items()})
        figures.update({f"state_at_any_version_{k}": v for k, v in latency_summary(at_any).items()})
        figures.update({f"state_at_actor_path_{k}": v for k, v in latency_summary(actor_temporal).items()})
        figures.update(_gateway_temporal(settings, story_id, versions[:CALLS]))
        figures.update(_snapshot_decode(loop, snapshots, story_id))
    finally:
        client.close()
        through_actor.close()
        loop.run_until_complete(in_loop.close())
        loop.run_until_complete(store.close())
        loop.run_until_complete(plain.close())
        loop.close()
    figures["load_after"] = os.getloadavg()[0]
    return figures


def _snapshot_decode(
    loop: asyncio.AbstractEventLoop, snapshots: JetStreamSnapshotStore, story_id: str
) -> dict[str, Any]:
    """The newest snapshot's decode (min of 20), alternating with its decode by the protobuf runtime
    alone (the path before the compiled decoder, and the one it leaves older shapes to) and with the
    protobuf parse alone."""
    refs = loop.run_until_complete(snapshots.refs(story_id))
    data = loop.run_until_complete(snapshots._get(refs[-1])).data or b""
    decode, with_protobuf, parse = [], [], []
    for _ in range(20):
        decode.append(_timed(lambda: decode_snapshot(data)))
        with_protobuf.append(_timed(lambda: decode_snapshot_with_protobuf(data)))
        parse.append(_timed(lambda: state_pb2.StoryStateSnapshot.FromString(data)))
    return {
        "snapshot_bytes": len(data),
        "snapshot_decode_min_ms": round(min(decode) * 1000, 2),
        "snapshot_decode_p50_ms": round(statistics.median(decode) * 1000, 2),
        "snapshot_decode_protobuf_path_min_ms": round(min(with_protobuf) * 1000, 2),
        "snapshot_decode_ratio_vs_protobuf_path": round(min(decode) / min(with_protobuf), 3),
        "snapshot_parse_only_min_ms": round(min(parse) * 1000, 2),
    }


def _event_decode(payloads: list[bytes]) -> dict[str, Any]:
    """The story's 10,000 events decoded in one batch (min of 5), alternating with the protobuf
    runtime's path: what decoding costs a history, apart from reading it."""
    compiled, with_protobuf = [], []
    for _ in range(5):
        compiled.append(_timed(lambda: decode_events(payloads)))
        with_protobuf.append(_timed(lambda: [decode_event_with_protobuf(data) for data in payloads]))
    return {
        "event_decode_us": round(min(compiled) / len(payloads) * 1e6, 2),
        "event_decode_protobuf_path_us": round(min(with_protobuf) / len(payloads) * 1e6, 2),
    }


def _check(count: int) -> None:
    if count < EVENTS:
        raise AssertionError(f"read {count} events, expected {EVENTS}")


def _next_event(state: StoryState, serial: int) -> Any:
    from fleet_actors.domain.events import EventEnvelope, SummaryRecorded

    return EventEnvelope(
        f"bench-{uuid.uuid4().hex}", state.story_id, state.version + 1, datetime.now(UTC),
        SummaryRecorded(f"from another writer {serial}"), command_id=f"other-{serial}", actor="other",
    )  # fmt: skip


def _gateway_temporal(settings: Any, story_id: str, versions: list[int]) -> dict[str, Any]:
    """GetContextAtTime through a gateway in this process (its reads run in the gateway)."""
    cpu: list[float] = []

    async def timed(address: str) -> list[float]:
        latencies = []
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ContextServiceStub(channel)
            for version in versions:
                started_cpu, started = time.process_time(), time.perf_counter()
                await stub.GetContextAtTime(pb.GetContextAtTimeRequest(story_id=story_id, role="DEV", version=version))
                latencies.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)  # the gateway's and this caller's
        return latencies

    full_collections: list[float] = []  # this process's full garbage collections during the calls
    started_collection = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started_collection[0] = time.perf_counter()
        elif info["generation"] == 2:
            full_collections.append(time.perf_counter() - started_collection[0])

    with gateway_in_thread(settings) as gateway:
        freeze_long_lived()  # as `fleet-actors gateway` does once it serves
        gc.callbacks.append(on_collection)
        try:
            latencies = asyncio.run(timed(gateway.address))
        finally:
            gc.callbacks.remove(on_collection)
        started = time.perf_counter()
        gc.collect()  # what a full collection would hold the gateway for now
        full_collection_now = time.perf_counter() - started
    cpu_figures = {f"gateway_at_time_cpu_{k}": v for k, v in latency_summary(cpu).items()}
    # With 60 calls the p99 is the slowest one: say whether that is the gateway's first read
    first = {
        "gateway_at_time_first_ms": round(latencies[0] * 1000, 1),
        "gateway_at_time_first_cpu_ms": round(cpu[0] * 1000, 1),
    }
    later = {f"gateway_at_time_after_first_{k}": v for k, v in latency_summary(latencies[1:]).items()}
    return {
        "gateway_at_time_full_collections_ms": [round(pause * 1000, 1) for pause in full_collections],
        "gateway_full_collection_after_calls_ms": round(full_collection_now * 1000, 1),
        **{f"gateway_at_time_{k}": v for k, v in latency_summary(latencies).items()},
        **cpu_figures,
        **first,
        **later,
    }
