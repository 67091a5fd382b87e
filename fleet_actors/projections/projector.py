"""A projector: one durable pull consumer over its partitions, feeding the graph and the context cache.

Exactly-once effect comes from version guards, not from the transport: the graph stores each
story's applied version in the same transaction as the change, the context document only moves
forward, and an event is acknowledged after both have committed. Redeliveries are skipped; a
story whose read model is behind the events at hand (lost documents, a parked event released, a
rebuild) is caught up from the event log itself, in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fleet_actors.codec import decode_event
from fleet_actors.domain.events import Event, EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import StateBuilder
from fleet_actors.errors import (
    BackendUnavailable,
    ConnectionInterrupted,
    EventDecodeError,
    ProjectionGap,
    Retryable,
    StoryError,
)
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import metrics
from fleet_actors.ports.event_feed import (
    Delivery,
    EventFeed,
    Feeds,
    PartitionConsumer,
    SnapshotNotices,
    partition_of,
    story_of,
)
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.read_models import ContextDocuments, GraphReadModel, ProjectionControl, SnapshotLink
from fleet_actors.projections.dead_letters import DeadLetters, ParkedEvent, now_iso
from fleet_actors.projections.policy import (
    DEFAULT_POLICY,
    LIVE_CONSUMERS,
    ProjectorPolicy,
    consumer_name,
    owned_partitions,
    partition_consumer_name,
    snapshot_consumer_name,
)
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ProjectorStats:
    batches: int = 0
    delivered: int = 0
    applied: int = 0
    skipped_duplicates: int = 0
    healed_from_log: int = 0
    parked: int = 0
    last_error: str = ""
    last_error_at: str = ""
    #: when the last error was cleared by a round that went through (empty while it lasts)
    last_error_cleared_at: str = ""
    last_sequence: int = 0
    #: unix time of the last published status: liveness for `projections status`
    heartbeat: float = 0.0
    #: the rebuild job this projector stays off the graph for ("" when not paused)
    paused_by: str = ""
    #: seconds from an event being stored to its projection committing (recent events)
    lag_p50_ms: float = 0.0
    lag_p99_ms: float = 0.0


PAUSE_POLL_SECONDS = 0.2
#: a busy projector publishes its status at most this often (the heartbeat below covers quiet times)
STATUS_AFTER_BATCH_SECONDS = 0.2
#: a projector publishes its status at least this often, busy, idle or paused (its heartbeat)
HEARTBEAT_SECONDS = 1.0
#: how often an idle projector reads the dead-letter index again for fleet_parked_events
PARKED_CHECK_SECONDS = 5.0
LAG_SAMPLES = 5000
PAUSE_ACK_TTL = 5
#: states kept per projector (LRU); beyond it a story's document is decoded again
COMMITTED_STATES = 1000


class Projector:
    def __init__(
        self,
        settings: Settings,
        index: int,
        count: int,
        *,
        feeds: Feeds,
        store: EventStore,
        graph: GraphReadModel,
        documents: ContextDocuments,
        control: ProjectionControl,
        dead_letters: DeadLetters,
        policy: ProjectorPolicy = DEFAULT_POLICY,
    ) -> None:
        self.settings = settings
        #: the projector's own name (stats, logs); its consumers are named after their partitions
        self.name = consumer_name(index, count)
        #: the ``projector`` label of its metrics (a bounded set: one per pool member)
        self.metrics_label = self.name
        self.consumer_prefix = LIVE_CONSUMERS
        self.partitions = owned_partitions(index, count, settings.partitions)
        self.policy = policy
        self.stats = ProjectorStats()
        self._feeds = feeds
        self.store = store
        self._graph = graph
        self._cache = documents
        self._control = control
        self.dead_letters = dead_letters
        self._failures: dict[int, int] = {}
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)
        self.feed: EventFeed | None = None
        #: the states this projector last committed to the context documents (most recent last)
        self._committed: collections.OrderedDict[str, StoryState] = collections.OrderedDict()
        self._snapshots: SnapshotNotices | None = None
        self._next_snapshot_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_parked_check = 0.0
        self._next_control_check = 0.0
        self._paused_by = ""
        #: (start, end) of the last batch's graph and document writes, time.time_ns() (for traces)
        self._graph_ns = self._documents_ns = (0, 0)

    async def close(self) -> None:
        if self.feed is not None:
            with contextlib.suppress(Exception):
                await self.feed.stop()
        if self._snapshots is not None:
            await self._snapshots.close()
        for closer in (self._graph.close, self._cache.close, self._feeds.close):
            with contextlib.suppress(Exception):
                await closer()

    # --- consumer ---------------------------------------------------------------------------

    def partition_consumers(self) -> list[PartitionConsumer]:
        return [
            PartitionConsumer(partition_consumer_name(self.consumer_prefix, p), p, self.settings.partition_filter(p))
            for p in self.partitions
        ]

    def start_sequence(self, consumer: PartitionConsumer, requested: int | None) -> int | None:
        """Where a partition consumer that does not exist yet starts (None: the beginning of the log)."""
        return requested

    async def ensure_consumer(self, start_sequence: int | None = None, end_sequence: int | None = None) -> None:
        """Create the partitions' durable consumers if missing (from ``start_sequence`` if given), bind
        to them and start fetching; with ``end_sequence``, stop at it."""
        if self.feed is not None:
            await self.feed.stop()
        feed = self._feeds.partitions(
            self.partition_consumers(),
            lambda consumer: self.start_sequence(consumer, start_sequence),
            ack_wait=self.policy.ack_wait,
            max_ack_pending=self.policy.batch_size * 4,
            fetch_size=max(10, self.policy.batch_size // len(self.partitions)),
            end_sequence=end_sequence,
            on_error=self._record_error,
        )
        await feed.start()
        self.feed = feed
        if self._snapshots is not None:
            await self._snapshots.close()
        # One consumer shared by the pool (any projector can link any story's snapshot); a rebuild's
        # replayers share their own, from the start.
        self._snapshots = self._feeds.snapshots(snapshot_consumer_name(self.consumer_prefix), self.policy.ack_wait)
        await self._snapshots.open()

    async def project_snapshots(self) -> int:
        """ContextSnapshot nodes for snapshots whose story the graph already holds at that version."""
        assert self._snapshots is not None, "ensure_consumer() first"
        notices = await self._snapshots.poll()
        if not notices:
            return 0
        versions = await self._graph.applied_versions(sorted({n.story_id for n in notices}))
        ready = [n for n in notices if versions.get(n.story_id, 0) >= n.version]
        await self._graph.link_snapshots([SnapshotLink(n.story_id, n.version, n.at) for n in ready])
        for notice in notices:
            if versions.get(notice.story_id, 0) >= notice.version:
                await notice.done()
            else:
                await notice.later(self.policy.backoff_max)  # the story's events are not projected yet
        return len(ready)

    async def run(self, stop: asyncio.Event) -> None:
        """Pull, project, acknowledge; until ``stop`` is set. Outages are waited out, never skipped."""
        while not stop.is_set():
            self._heartbeat()
            try:
                await self._beat()
                if self._paused_by or time.monotonic() >= self._next_control_check:
                    # The pause and release keys: read at most every PAUSE_POLL_SECONDS rather than before
                    # every batch (two round trips of a small batch's dozen); every time while paused.
                    self._next_control_check = time.monotonic() + PAUSE_POLL_SECONDS
                    if await self._paused():
                        await asyncio.sleep(PAUSE_POLL_SECONDS)
                        continue
                    await self._apply_releases()
                assert self.feed is not None, "ensure_consumer() first"
                try:
                    msgs = await self.feed.next_batch(self.policy.batch_size, self.policy.fetch_timeout)
                except TimeoutError:
                    await self._idle()
                    await self.project_snapshots()
                    self._recovered()
                    continue
                await self._process_until_done(msgs, stop)
                if time.monotonic() >= self._next_snapshot_poll:
                    self._next_snapshot_poll = time.monotonic() + 1.0
                    await self.project_snapshots()
                self._recovered()
                if time.monotonic() - getattr(self, "_last_beat", 0.0) >= STATUS_AFTER_BATCH_SECONDS:
                    await self._publish_stats()  # not after every batch: one write less per batch
            except ConnectionInterrupted as error:  # the client reconnects by itself: look again soon
                self._record_error(error)
                await asyncio.sleep(self.policy.backoff_initial)
            except Retryable as error:
                self._record_error(error)
                await asyncio.sleep(self.policy.backoff_max)
            except (TimeoutError, OSError) as error:
                # A server did not answer (an outage longer than a request's timeout): wait it out too
                self._record_error(BackendUnavailable(f"no answer while projecting: {error!r}"))
                await asyncio.sleep(self.policy.backoff_max)

    async def _process_until_done(self, msgs: list[Delivery], stop: asyncio.Event) -> None:
        delay = self.policy.backoff_initial
        while True:
            try:
                await self.process(msgs)
                return
            except asyncio.CancelledError:
                if self.feed is not None:
                    self.feed.give_back(msgs)  # interrupted mid-batch: the next reader gets them at once
                raise
            except Retryable as error:
                self._record_error(error)
                if stop.is_set():
                    return  # unacknowledged: redelivered to whoever runs next
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.backoff_max)
                if self.feed is not None:  # still working on them: don't let them be redelivered meanwhile
                    await self.feed.still_working(msgs)

    async def _paused(self) -> bool:
        """A rebuild owns the graph: stay off it, and say so (see projections/rebuild.py)."""
        job = await self._control.pausing_job()
        self.stats.paused_by = job or ""
        if (job or "") != self._paused_by:  # a change: report it (0 for the rebuild that ended, 1 for the new one)
            m = metrics()
            if self._paused_by:
                m.projector_paused.set(0, self.metrics_label, self._paused_by)
            m.projector_paused.set(1 if job else 0, self.metrics_label, job or "")
            self._paused_by = job or ""
        if job is None:
            return False
        await self._control.acknowledge_pause(job, self.feed.names if self.feed else [], PAUSE_ACK_TTL)
        return True

    async def _publish_stats(self) -> None:
        """For `fleet-actors projections status`, which reads it without going through Ray."""
        self.stats.heartbeat = time.time()
        self._last_beat = time.monotonic()
        with contextlib.suppress(StoryError):
            await self._control.publish_status(self.name, dataclasses.asdict(self.stats))

    async def _beat(self) -> None:
        """Publish the status when it is older than the heartbeat: an idle or paused pool stays visible."""
        if time.monotonic() - getattr(self, "_last_beat", 0.0) >= HEARTBEAT_SECONDS:
            await self._publish_stats()

    def _recovered(self) -> None:
        """A round went through: an error recorded before it is over (unless an event still fails)."""
        if self.stats.last_error and not self._failures:
            self.stats.last_error = ""
            self.stats.last_error_cleared_at = now_iso()
    def _heartbeat(self) -> None:
        now = time.time()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + 1.0
            metrics().projector_heartbeat.set(now, self.metrics_label)

    async def _idle(self) -> None:
        """Nothing came within the fetch timeout: the owned partitions have no lag. Every few seconds
        the parked count is read again (a release, or a park by another projector, changes it)."""
        m = metrics()
        for partition in self.partitions:
            label = str(partition)
            m.lag_events.set(0, label)
            m.lag_seconds.set(0, label)
        if time.monotonic() >= self._next_parked_check:
            self._next_parked_check = time.monotonic() + PARKED_CHECK_SECONDS
            m.parked.set(len(await self.dead_letters.held()), self.metrics_label)

    def _record_error(self, error: BaseException) -> None:
        metrics().projection_errors.inc(self.metrics_label)
        self.stats.last_error = str(error)[:500]
        self.stats.last_error_at = now_iso()
        self.stats.last_error_cleared_at = ""
        log.warning("projector %s: %s", self.name, error)

    # --- one batch --------------------------------------------------------------------------

    async def process(self, msgs: Sequence[Delivery]) -> None:
        started, started_ns = time.perf_counter(), time.time_ns()
        self.stats.batches += 1
        self.stats.delivered += len(msgs)
        held = await self.dead_letters.held()
        m = metrics()
        m.parked.set(len(held), self.metrics_label)
        parked_before = self.stats.parked
        events: dict[str, list[EventEnvelope]] = {}
        msgs_of: dict[str, list[Delivery]] = {}
        acknowledge: list[Delivery] = []
        waiting: list[Delivery] = []  # behind a failing event of the same story: redelivered later
        failing: set[str] = set()
        for msg in msgs:
            story_id = story_of(msg.subject)
            if story_id in held:
                acknowledge.append(msg)  # kept in the log; read back from it on release
                m.projected_events.inc(self.metrics_label, "held")
                continue
            if story_id in failing:
                waiting.append(msg)
                continue
            try:
                envelope = decode_event(msg.data)
            except EventDecodeError as error:
                failing.add(story_id)
                await self._failed(story_id, msg, error, waiting, acknowledge)
                continue
            events.setdefault(story_id, []).append(envelope)
            msgs_of.setdefault(story_id, []).append(msg)

        failures = await self._project(events, offsets=self._offsets(msgs))
        for story_id, failure in failures.items():
            first, *rest = msgs_of.pop(story_id)
            await self._failed(story_id, first, failure, waiting, acknowledge)
            waiting.extend(rest)
        for story_msgs in msgs_of.values():
            acknowledge.extend(story_msgs)
        self._record_lag(acknowledge)
        assert self.feed is not None
        await self.feed.acknowledge(acknowledge)
        await self.feed.retry_later(waiting, self.policy.backoff_max)
        if acknowledge:
            self.stats.last_sequence = max(self.stats.last_sequence, *(m.metadata.sequence.stream for m in acknowledge))
        self._observe_batch(msgs, acknowledge, started)
        if self.stats.parked != parked_before:
            m.parked.set(len(held) + self.stats.parked - parked_before, self.metrics_label)
        if tracing.enabled():
            self._trace_applied(acknowledge, held, started_ns)

    def _observe_batch(self, msgs: Sequence[Delivery], acknowledged: Sequence[Delivery], started: float) -> None:
        """Batch size, apply time, redeliveries and, per partition, the lag after this batch."""
        m, label = metrics(), self.metrics_label
        m.apply_duration.observe(time.perf_counter() - started, label)
        m.batch_size.observe(len(msgs), label)
        redelivered = sum(1 for msg in msgs if getattr(msg.metadata, "num_delivered", 1) > 1)
        if redelivered:
            m.redeliveries.inc(label, amount=redelivered)
        last: dict[int, Delivery] = {}
        for msg in acknowledged:
            last[partition_of(msg.subject)] = msg
        now = datetime.now(UTC)
        for partition, msg in last.items():
            m.lag_events.set(getattr(msg.metadata, "num_pending", 0), str(partition))
            m.lag_seconds.set(max(0.0, (now - msg.metadata.timestamp).total_seconds()), str(partition))

    def _trace_applied(self, acknowledged: Sequence[Delivery], held: Mapping[str, object], started_ns: int) -> None:
        """Continue the commands' traces: one projection.apply span per trace in the batch."""
        now = datetime.now(UTC)
        traced = []
        for msg in acknowledged:
            headers = getattr(msg, "headers", None)
            story_id = story_of(msg.subject)
            if headers and tracing.TRACEPARENT in headers and story_id not in held:
                traced.append((headers, story_id, 1, (now - msg.metadata.timestamp).total_seconds()))
        tracing.applied(traced, started_ns, self._graph_ns, self._documents_ns, self.metrics_label)

    def _offsets(self, msgs: Sequence[Delivery]) -> dict[str, int]:
        """The last stream sequence of each partition consumer in the batch."""
        offsets: dict[str, int] = {}
        for msg in msgs:
            name = f"{self.settings.stream_name}.{self._consumer_of(msg.subject)}"
            offsets[name] = max(offsets.get(name, 0), msg.metadata.sequence.stream)
        return offsets

    def _consumer_of(self, subject: str) -> str:
        return partition_consumer_name(self.consumer_prefix, partition_of(subject))

    def _record_lag(self, msgs: Sequence[Delivery]) -> None:
        now = datetime.now(UTC)
        self._lags.extend((now - m.metadata.timestamp).total_seconds() for m in msgs)
        if self._lags:
            ordered = sorted(self._lags)
            self.stats.lag_p50_ms = round(ordered[len(ordered) // 2] * 1000, 1)
            self.stats.lag_p99_ms = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)

    async def _failed(
        self, story_id: str, msg: Delivery, error: Exception, waiting: list[Delivery], ack: list[Delivery]
    ) -> None:
        """An event that fails for a reason of its own: retried, then parked in the dead-letter stream."""
        sequence = msg.metadata.sequence.stream
        attempts = self._failures.get(sequence, 0) + 1
        self._failures[sequence] = attempts
        self._record_error(error)
        if attempts < self.policy.max_deliver:
            waiting.append(msg)
            return
        version = 0
        with contextlib.suppress(EventDecodeError):
            version = decode_event(msg.data).version
        await self.dead_letters.park(
            ParkedEvent(
                story_id=story_id,
                version=version,
                stream_sequence=sequence,
                subject=msg.subject,
                consumer=self._consumer_of(msg.subject),
                error=str(error),
                deliveries=attempts,
                parked_at=now_iso(),
            ),
            msg.data,
        )
        self._failures.pop(sequence, None)
        self.stats.parked += 1
        log.warning(
            "projector %s: parked the event at stream sequence %s after %s deliveries: %s",
            self.name,
            sequence,
            attempts,
            error,
            extra={"story_id": story_id},
        )
        metrics().parked_total.inc(self.metrics_label)
        ack.append(msg)

    async def _project(
        self, events: Mapping[str, list[EventEnvelope]], offsets: Mapping[str, int] | None = None
    ) -> dict[str, StoryError]:
        """Apply events to both read models; returns the stories that failed for reasons of their own."""
        if not events:
            return {}
        # A redelivery can put the same event into one batch twice: one copy per version, in order.
        events = {story_id: distinct_versions(story_events) for story_id, story_events in events.items()}
        known = await self._load_states(list(events))
        states: dict[str, StoryState] = {}
        failures: dict[str, StoryError] = {}
        for story_id, story_events in events.items():
            state = known.get(story_id) or StoryState(story_id)
            try:
                states[story_id] = await self._fold(state, story_events)
            except EventDecodeError as error:
                failures[story_id] = error
        graph_events = {s: e for s, e in events.items() if s in states}
        graph_started = time.time_ns()
        try:
            result = await self._graph.apply(graph_events, states)
        except Retryable:
            raise
        except StoryError:
            if len(graph_events) == 1:
                raise
            # One story's data breaks the transaction: find it, let the others through.
            result = None
            for story_id in list(graph_events):
                try:
                    await self._graph.apply({story_id: graph_events[story_id]}, {story_id: states[story_id]})
                except Retryable:
                    raise
                except StoryError as error:
                    failures[story_id] = error
                    states.pop(story_id)
        if result is not None:
            before = sum(len(v) for v in graph_events.values())
            duplicates = max(0, before - result.applied_events - len(result.gaps))
            self.stats.skipped_duplicates += duplicates
            self.stats.applied += result.applied_events
            m = metrics()
            m.projected_events.inc(self.metrics_label, "applied", amount=result.applied_events)
            if duplicates:
                m.projected_events.inc(self.metrics_label, "duplicate", amount=duplicates)
            for story_id, graph_version in result.gaps.items():
                # The graph is behind these events: replay the story's missing events from the log.
                missing = await self._read_log(story_id, graph_version, states[story_id].version)
                self.stats.healed_from_log += len(missing)
                metrics().projected_events.inc(self.metrics_label, "healed", amount=len(missing))
                healed = await self._graph.apply({story_id: missing}, {story_id: states[story_id]})
                if story_id in healed.gaps:
                    failures[story_id] = ProjectionGap(f"story {story_id!r}: the graph could not be caught up")
                    states.pop(story_id)
        documents_started = time.time_ns()
        self._graph_ns = (graph_started, documents_started)
        await self._save_states(states, [e.event_id for s in states for e in events[s]], offsets or {})
        self._documents_ns = (documents_started, time.time_ns())
        return failures

    async def _load_states(self, story_ids: list[str]) -> dict[str, StoryState]:
        """The folded state each story's events continue from: the copy of what this projector last
        committed, unless the context document has moved past it (another projector wrote it after a
        pool resize), in which case the document itself. Decoding documents dominated small batches."""
        versions = await self._cache.versions(story_ids)
        known: dict[str, StoryState] = {}
        for story_id in story_ids:
            state = self._committed.get(story_id)
            if state is not None and state.version >= versions.get(story_id, 0):
                known[story_id] = state
        missing = [story_id for story_id in story_ids if story_id not in known]
        if missing:
            documents = await self._cache.get_many(missing)
            known.update({story_id: document.state for story_id, document in documents.items() if document})
        return known

    async def _save_states(
        self, states: dict[str, StoryState], event_ids: list[str], offsets: Mapping[str, int]
    ) -> None:
        await self._cache.commit(states.values(), processed_event_ids=event_ids, offsets=offsets)
        for story_id, state in states.items():
            self._committed[story_id] = state
            self._committed.move_to_end(story_id)
        while len(self._committed) > COMMITTED_STATES:
            self._committed.popitem(last=False)

    async def _fold(self, state: StoryState, events: list[EventEnvelope]) -> StoryState:
        fresh = [e for e in events if e.version > state.version]
        if not fresh:
            return state
        if fresh[0].version != state.version + 1:
            # The document is behind (lost, or never written): rebuild the missing part from the log.
            missing = await self._read_log(state.story_id, state.version, fresh[0].version - 1)
            self.stats.healed_from_log += len(missing)
            fresh = missing + fresh
        builder = StateBuilder(state)
        for envelope in fresh:
            if envelope.version != builder.version + 1:
                raise EventDecodeError(
                    f"story {state.story_id!r}: version {envelope.version} follows {builder.version}; the log has a gap"
                )
            builder.add(envelope)
        return builder.state()

    async def _read_log(self, story_id: str, after_version: int, up_to_version: int) -> list[EventEnvelope]:
        return await read_log(self.store, story_id, after_version, up_to_version)

    # --- releases from the dead-letter queue ---------------------------------------------------

    async def _apply_releases(self) -> None:
        releases = await self.dead_letters.pending_releases()
        if not releases:
            return
        held = await self.dead_letters.held()
        for story_id, action in releases.items():
            parked = held.get(story_id)
            if parked is None:
                await self.dead_letters.released(story_id)
                continue
            if partition_of(parked.subject) not in self.partitions:
                continue  # another projector owns that story
            await self._release(parked, skip=action == "skip")

    async def _release(self, parked: ParkedEvent, *, skip: bool) -> None:
        story_id = parked.story_id
        document = await self._cache.get(story_id)
        state = document.state if document else StoryState(story_id)
        versions = await self._graph.applied_versions([story_id])
        start = min(state.version, versions.get(story_id, 0))
        envelopes: list[EventEnvelope] = []
        previous = 0
        try:
            async for sequence, data in self.store.read_raw(story_id):
                if skip and sequence == parked.stream_sequence:
                    # Stand-in for the skipped event: it advances the version and changes nothing else.
                    envelope = skipped_event(story_id, parked.version or previous + 1)
                else:
                    envelope = decode_event(data)
                previous = envelope.version
                if envelope.version > start:
                    envelopes.append(envelope)
        except EventDecodeError as error:
            self._record_error(error)
            await self.dead_letters.park(replace(parked, error=str(error), parked_at=now_iso()), b"")
            await self.dead_letters.drop_release(story_id)
            return
        failures = await self._project({story_id: envelopes}) if envelopes else {}
        if story_id in failures:
            self._record_error(failures[story_id])
            await self.dead_letters.drop_release(story_id)
            return
        await self.dead_letters.released(story_id)


# Shared with the user projections' runner (projections/runner.py).


def distinct_versions(envelopes: Sequence[EventEnvelope]) -> list[EventEnvelope]:
    """A redelivery can put the same event into one batch twice: one copy per version, in order."""
    return sorted({e.version: e for e in reversed(envelopes)}.values(), key=lambda e: e.version)


def skipped_event(story_id: str, version: int) -> EventEnvelope:
    """Stand-in for an event skipped by ``dlq skip``: it advances the version and changes nothing else."""
    return EventEnvelope(f"skipped-{version}", story_id, version, datetime.now(UTC), Event(), "", "dlq-skip")


async def read_log(store: EventStore, story_id: str, after_version: int, up_to_version: int) -> list[EventEnvelope]:
    """The story's events with ``after_version < version <= up_to_version``, from the log."""
    return [
        stored.envelope
        async for stored in store.read(story_id)
        if after_version < stored.envelope.version <= up_to_version
    ]
