"""Rebuild the graph from the event log, in parallel, resumable, with an exact hand-over.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fleet_actors.adapters.jetstream import connect_nats, nats_errors
from fleet_actors.adapters.jetstream.partition_feed import PartitionConsumer
from fleet_actors.adapters.jetstream.snapshot_store import snapshot_stream
from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.valkey import ContextCache, valkey_errors
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import BackendUnavailable, InvalidCommand
from fleet_actors.projections.policy import ProjectorPolicy, owned_partitions
from fleet_actors.projections.projector import Projector, pause_key, paused_key
from fleet_actors.projections.verify import list_story_ids
from fleet_actors.settings import Settings

REPLAY_POLICY = ProjectorPolicy(batch_size=1000, fetch_timeout=1.0, max_deliver=3, ack_wait=120.0)
WIPE_CHUNK = 200
#: every node of a story hangs off its Story node (see graph_mapping), so one traversal finds them
WIPE_STORIES = """
MATCH (s:Story) WHERE s.story_id IN $ids
OPTIONAL MATCH (s)-[:HAS_SUBTASK|HAS_DECISION|HAS_TRANSITION|HAS_MILESTONE|HAS_SNAPSHOT]->(n)
DETACH DELETE n, s
"""
PAUSE_TIMEOUT = 60.0


def job_key(settings: Settings, job_id: str) -> str:
    return f"rebuild:{settings.stream_name}:{job_id}"


def replay_consumer(job_id: str, index: int, count: int) -> str:
    return f"rebuild-{job_id}-{index}-of-{count}"


@dataclass(frozen=True)
class RebuildScope:
    """Whole graph (no stories, no since), some stories, or the stories changed since a time."""

    story_ids: tuple[str, ...] = ()
    since: datetime | None = None

    @property
    def whole(self) -> bool:
        return not self.story_ids and self.since is None

    def describe(self) -> str:
        if self.story_ids:
            return f"stories {', '.join(self.story_ids[:5])}{' ...' if len(self.story_ids) > 5 else ''}"
        return f"stories changed since {self.since.isoformat()}" if self.since else "the whole graph"


class Replayer(Projector):
    """A projector for one rebuild: its own consumer from the start, state kept in memory."""

    def __init__(self, settings: Settings, index: int, count: int, *, job_id: str, **kwargs: Any) -> None:
        super().__init__(settings, index, count, **kwargs)
        self.name = replay_consumer(job_id, index, count)
        self.consumer_prefix = f"rebuild-{job_id}"
        self._states: dict[str, StoryState] = {}
        self.done_events = 0
        #: with an archive (FLEET_ARCHIVE_URL): the archive's manifest; its events are replayed first
        self.archive: Any = None
        self.archive_manifest: Any = None

    async def _load_states(self, story_ids: list[str]) -> dict[str, StoryState]:
        return {s: self._states[s] for s in story_ids if s in self._states}

    async def _save_states(
        self, states: dict[str, StoryState], event_ids: list[str], offsets: Mapping[str, int]
    ) -> None:
        self._states.update(states)

    def consumer_config(self, consumer: PartitionConsumer, start_sequence: int | None = None) -> ConsumerConfig:
        config = super().consumer_config(consumer, start_sequence)
        config.deliver_policy = DeliverPolicy.ALL
        config.opt_start_seq = None
        if self.archive_manifest is not None and self.archive_manifest.last_sequence:
            # Archived events come from the archive: the stream part starts right after it.
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.archive_manifest.last_sequence + 1
        return config

    async def replay_until(self, end_sequence: int) -> int:
        """Apply every owned event up to ``end_sequence``; returns how many were delivered."""
        if self.archive_manifest is not None:
            from fleet_actors.archive.replay import replay_archive

            await replay_archive(self, self.archive, self.archive_manifest, end_sequence)
        # Each partition stops at the end: after it, the live projectors take over.
        await self.ensure_consumer(end_sequence=end_sequence)
        while True:
            try:
                msgs = await self.feed.next_batch(self.policy.batch_size, self.policy.fetch_timeout)
            except TimeoutError:
                if self.feed.finished() or await self.feed.drained():
                    break
                continue
            await self._process_until_done(msgs, asyncio.Event())
            self.done_events += len(msgs)
        await self.project_snapshots_until_empty()
        return self.done_events

    async def project_snapshots_until_empty(self) -> None:
        while await self.project_snapshots():
            pass

    async def replay_stories(self, story_ids: Sequence[str], end_sequence: int) -> int:
        """Some stories only: read each from the log (up to the end) and apply in chunks."""
        for story_id in story_ids:
            envelopes: list[EventEnvelope] = [
                stored.envelope async for stored in self._store.read(story_id) if stored.sequence <= end_sequence
            ]
            for start in range(0, len(envelopes), self.policy.batch_size):
                chunk = envelopes[start : start + self.policy.batch_size]
                state = fold(self._states.get(story_id) or StoryState(story_id), chunk)
                self._states[story_id] = state
                await self._graph.apply({story_id: chunk}, {story_id: state})
                self.done_events += len(chunk)
        return self.done_events


async def open_replayer(settings: Settings, job_id: str, index: int, count: int) -> Replayer:
    nc = await connect_nats(settings, name=f"fleet-{replay_consumer(job_id, index, count)}")
    try:
        graph = await GraphStore.connect(settings)
        cache = await ContextCache.connect(settings)
    except BaseException:
        await nc.close()
        raise
    from fleet_actors.archive.composite import open_event_store

    store = await open_event_store(settings, nc)
    replayer = Replayer(
        settings, index, count, nc=nc, store=store, graph=graph, cache=cache,
        policy=REPLAY_POLICY, job_id=job_id,
    )  # fmt: skip
    if settings.archive_url:
        replayer.archive = store.archive  # type: ignore[attr-defined]
        replayer.archive_manifest = await replayer.archive.manifest()
    return replayer


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


Progress = Callable[[int, int, float], None]
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
            cache = await ContextCache.connect(self.settings)
            connections.push_async_callback(cache.close)
            nc = await connect_nats(self.settings, name="fleet-rebuild")
            connections.push_async_callback(nc.close)
            graph = await GraphStore.connect(self.settings)
            connections.push_async_callback(graph.close)
            key = job_key(self.settings, self.job_id)
            with valkey_errors("reading the rebuild's progress"):
                state = {k.decode(): v.decode() for k, v in (await cache.client.hgetall(key)).items()}
            resumed = bool(state)
            await self._pause(cache, nc)
            if "end_sequence" not in state:
                with nats_errors(f"reading the end of stream {self.settings.stream_name}"):
                    info = await nc.jsm().stream_info(self.settings.stream_name)
                state["end_sequence"] = str(info.state.last_seq)
                await _record_progress(cache, key, end_sequence=state["end_sequence"], phase="pause")
            end = int(state["end_sequence"])
            story_ids = list(self.scope.story_ids) or (await self._changed_since(nc) if self.scope.since else [])
            if state.get("phase") in (None, "pause"):
                await self._wipe(graph, story_ids if not self.scope.whole else await list_story_ids(nc, self.settings))
                await _record_progress(cache, key, phase="replay")
            total = end if self.scope.whole else sum([await self._count(nc, s, end) for s in story_ids])
            done = await run_workers(self.job_id, self.workers, end, story_ids, total, progress)
            await self._hand_over(cache, nc)
            await _record_progress(cache, key, phase="done")
            return RebuildReport(
                self.job_id, self.scope.describe(), end, done, len(story_ids), time.monotonic() - started, resumed
            )

    async def _pause(self, cache: ContextCache, nc: Any) -> None:
        with valkey_errors("pausing the live projectors"):
            await cache.client.set(pause_key(self.settings), self.job_id)
        live = [
            c.name
            for c in await _consumers(nc, self.settings)
            if c.name.startswith("projector-") and not c.name.endswith("-snapshots") and (c.num_waiting or 0) > 0
        ]
        deadline = time.monotonic() + PAUSE_TIMEOUT
        for name in live:
            while True:
                with valkey_errors("waiting for the live projectors to pause"):
                    if await cache.client.get(paused_key(self.settings, name)) == self.job_id.encode():
                        break
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"live projector {name} did not pause within {PAUSE_TIMEOUT:.0f} s")
                await asyncio.sleep(0.1)

    async def _hand_over(self, cache: ContextCache, nc: Any) -> None:
        jsm = nc.jsm()
        with nats_errors("deleting the rebuild's consumers"):
            for consumer in await _consumers(nc, self.settings):
                if consumer.name.startswith(f"rebuild-{self.job_id}-"):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await jsm.delete_consumer(self.settings.stream_name, consumer.name)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                for consumer in await jsm.consumers_info(snapshot_stream(self.settings)):
                    if consumer.name.startswith(f"rebuild-{self.job_id}-"):
                        await jsm.delete_consumer(snapshot_stream(self.settings), consumer.name)
        with valkey_errors("resuming the live projectors"):
            await cache.client.delete(pause_key(self.settings))

    async def _wipe(self, graph: GraphStore, story_ids: Iterable[str]) -> None:
        """Delete the subgraphs of the stories this log can rebuild, and nothing else: a graph
        database may hold other data, and stories absent from the log could not come back."""
        ids = list(story_ids)
        for start in range(0, len(ids), WIPE_CHUNK):
            await graph.query_write(WIPE_STORIES, ids=ids[start : start + WIPE_CHUNK])

    async def _changed_since(self, nc: Any) -> list[str]:
        """Stories with an event stamped at or after ``since``: a headers-only scan from that time."""
        with nats_errors(f"finding the stories changed since {self.scope.since.isoformat()}"):
            js = nc.jetstream()
            sub = await js.subscribe(
                f"{self.settings.subject_prefix}.>",
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_TIME,
                    opt_start_time=self.scope.since.isoformat(),
                    headers_only=True,
                    ack_policy=AckPolicy.NONE,
                ),
            )
            stories: set[str] = set()
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=1.0)
                    except (TimeoutError, nats.errors.TimeoutError):
                        break
                    stories.add(msg.subject.rsplit(".", 3)[-3])
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()
            return sorted(stories)

    async def _count(self, nc: Any, story_id: str, end: int) -> int:
        with nats_errors(f"counting the events of story {story_id}"):
            info = await nc.jsm().stream_info(
                self.settings.stream_name, subjects_filter=self.settings.story_filter(story_id)
            )
        return sum((info.state.subjects or {}).values())


async def _record_progress(cache: ContextCache, key: str, **fields: str) -> None:
    """What a resumed job needs to know (its end sequence, the phase it reached)."""
    with valkey_errors("recording the rebuild's progress"):
        await cache.client.hset(key, mapping=fields)


async def _consumers(nc: Any, settings: Settings) -> list[Any]:
    with nats_errors(f"listing the consumers of stream {settings.stream_name}"):
        try:
            return await nc.jsm().consumers_info(settings.stream_name)
        except nats.js.errors.NotFoundError:
            return []


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def assert_partitions(settings: Settings, workers: int) -> None:
    owned_partitions(workers - 1, workers, settings.partitions)  # raises if workers > partitions
