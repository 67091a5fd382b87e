"""The runner of every projection, the built-in read models (``read_models_projection.py``) and
users' own (``projections/api.py``): one mechanism.

- Durable consumers per partition, ``{prefix}-partition-{p}`` (``proj-{name}-v{version}`` for a user
  projection, ``projector`` for the built-in read models, ``rebuild-{job}`` for a rebuild's
  replayers); runner ``i`` of ``n`` owns the partitions ``p % n == i`` (JetStream delivers each
  story's events to one runner, in order).
- Catch-up from the beginning: with an archive (FLEET_ARCHIVE_URL) the archived events of the owned
  partitions are applied first, then the consumers start right after the archive's last sequence;
  without one they start at the first event. The version guard makes the seam exact: an event at
  or below a story's applied version is skipped, a story whose first new event does not follow it
  is caught up from the log (``EventStore.read``, which reads through the archive).
- The version guard reads the projection's own ``applied_versions`` when it has one (exactly once:
  its checkpoint commits with its writes), otherwise the :class:`ProjectionCheckpoints` port, which
  is advanced after ``apply`` returns (at least once across a crash between the two: such a
  projection's ``apply`` must tolerate seeing a story's last batch again; see docs/projections.md).
- Batching: one ``apply`` per delivered batch (up to ``policy.batch_size`` events), with the batch's
  stream positions at hand (``api.batch_positions``).
- Poison events: a batch that fails is split by story, a failing story event by event; the failing
  event is retried ``max_deliver`` times, then parked in the dead-letter stream, and only its story
  is held (``fleet-actors dlq ...``).
- Progress (phase, applied, rate, lag, archive position, heartbeat) is published for ``projections
  status``; metrics under the runner's name (``fleet_projection_*``, label ``projector``); a trace
  span per traced command that the batch applied.
- With a :class:`ProjectionControl` (the built-in read models), a rebuild can pause the runner
  (``projections/rebuild.py``): it finishes its batch, acknowledges and stays off its targets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fleet_actors.codec import decode_event
from fleet_actors.domain.events import Event, EventEnvelope
from fleet_actors.errors import (
    BackendUnavailable,
    ConnectionInterrupted,
    EventDecodeError,
    ProjectionGap,
    Retryable,
)
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import metrics
from fleet_actors.ports.checkpoints import ArchivedEvents, ArchivedRow, ProjectionCheckpoints
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
from fleet_actors.ports.read_models import ProjectionControl
from fleet_actors.projections.api import (
    Projection,
    applying_at,
    consumer_prefix,
    describe,
    done_applying,
    optional_hook,
    projection_id,
    validate,
)
from fleet_actors.projections.dead_letters import DeadLetters, ParkedEvent, now_iso
from fleet_actors.projections.policy import (
    DEFAULT_POLICY,
    ProjectorPolicy,
    owned_partitions,
    partition_consumer_name,
    snapshot_consumer_name,
)
from fleet_actors.projections.read_models_projection import read_log
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: seconds between progress publications while busy (the heartbeat below covers quiet times)
PROGRESS_EVERY = 0.2
#: a runner publishes its progress at least this often, busy, idle or paused
HEARTBEAT_SECONDS = 1.0
#: how often a runner reads the release (and, with a control, the pause) keys; every time while paused
PAUSE_POLL_SECONDS = 0.2
PAUSE_ACK_TTL = 5
#: how often an idle runner reads the dead-letter index again for fleet_parked_events
PARKED_CHECK_SECONDS = 5.0
#: commit lags kept for the p50/p99 in the progress record
LAG_SAMPLES = 5000


@dataclass(frozen=True)
class RunnerNames:
    """What a runner is known by."""

    #: its checkpoint, progress and registration key (``{name}-v{version}``)
    id: str
    #: its durable consumers are ``{consumer_prefix}-partition-{p}``
    consumer_prefix: str
    #: this runner of the pool (progress rows, logs, the ``projector`` label of its metrics)
    worker: str
    #: the ``projection`` of the events it parks ("" for the built-in read models)
    parked_as: str
    #: registered for ``projections status`` (the built-in read models have their own rows)
    registered: bool = True
    metrics_label: str = ""

    @classmethod
    def of(cls, projection: Projection, index: int, count: int) -> RunnerNames:
        prefix = consumer_prefix(projection)
        id_ = projection_id(projection)
        return cls(id_, prefix, f"{prefix}-{index}-of-{count}", id_)

    @property
    def label(self) -> str:
        return self.metrics_label or self.worker


@dataclass
class RunnerProgress:
    #: "archive" while catching up from the archive, then "live"
    phase: str = "starting"
    batches: int = 0
    delivered: int = 0
    applied: int = 0
    skipped_duplicates: int = 0
    healed_from_log: int = 0
    parked: int = 0
    last_sequence: int = 0
    #: the archive's last sequence when catch-up began, and how far it has been applied
    archive_last: int = 0
    archive_through: int = 0
    archive_applied: int = 0
    #: applied events per second (recent)
    rate: float = 0.0
    started_at: str = ""
    updated_at: str = ""
    last_error: str = ""
    last_error_at: str = ""
    #: when the last error was cleared by a round that went through (empty while it lasts)
    last_error_cleared_at: str = ""
    #: unix time of the last published progress: liveness for ``projections status``
    heartbeat: float = 0.0
    #: the rebuild job this runner stays off its targets for ("" when not paused)
    paused_by: str = ""
    #: seconds from an event being stored to its projection committing (recent events)
    lag_p50_ms: float = 0.0
    lag_p99_ms: float = 0.0
    #: the built-in read models: the version of each it writes, ``{"graph": g, "documents": d}``
    targets: dict[str, int] = field(default_factory=dict)


class ProjectionRunner:
    def __init__(
        self,
        projection: Projection,
        settings: Settings,
        index: int = 0,
        count: int = 1,
        *,
        feeds: Feeds,
        store: EventStore,
        checkpoints: ProjectionCheckpoints,
        dead_letters: DeadLetters,
        archive: ArchivedEvents | None = None,
        policy: ProjectorPolicy = DEFAULT_POLICY,
        names: RunnerNames | None = None,
        control: ProjectionControl | None = None,
        start_sequence: int | None = None,
    ) -> None:
        """``names``: the consumers and keys (default: the projection's own, ``RunnerNames.of``);
        ``control``: pause for rebuilds and publish the status rows of ``projections status``;
        ``start_sequence``: where consumers that do not exist yet start (default: the first event,
        or right after the archive)."""
        self.projection = validate(projection)
        self.settings = settings
        self.names = names or RunnerNames.of(projection, index, count)
        self.id = self.names.id
        self.consumer_prefix = self.names.consumer_prefix
        self.worker = self.names.worker
        self.partitions = owned_partitions(index, count, settings.partitions)
        self.policy = policy
        self.progress = RunnerProgress(started_at=now_iso())
        self._feeds = feeds
        self.store = store
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.archive = archive
        self.control = control
        self.start_sequence = start_sequence
        self.feed: EventFeed | None = None
        self._failures: dict[tuple[str, int], int] = {}
        self._own_versions = optional_hook(projection, "applied_versions")
        self._tick = optional_hook(projection, "tick")
        self._rate_window: list[tuple[float, int]] = []
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)
        self._next_publish = self._next_control_check = self._next_parked_check = self._next_heartbeat = 0.0
        self._snapshot_notices: SnapshotNotices | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def partition_consumers(self) -> list[PartitionConsumer]:
        return [
            PartitionConsumer(partition_consumer_name(self.consumer_prefix, p), p, self.settings.partition_filter(p))
            for p in self.partitions
        ]

    async def start(self) -> None:
        """Register, catch up from the archive (if any), then bind the live consumers right after it."""
        if self.names.registered:
            record = {**describe(self.projection), "partitions": self.settings.partitions, "registered_at": now_iso()}
            await self.checkpoints.register(self.id, record)
        await self.dead_letters.ensure_stream()
        archived = await self.archive.last_sequence() if self.archive is not None else 0
        if archived:
            # After a restart, from where this runner's last published progress says it got to.
            previous = (await self.checkpoints.progress(self.id)).get(self.worker, {})
            done = int(previous.get("archive_through", 0)) if previous.get("partitions") == self.partitions else 0
            await self.catch_up_archive(archived, after=min(done, archived))
        self.progress.phase = "live"
        await self.bind(archived + 1 if archived else self.start_sequence)
        await self.publish_progress(force=True)

    async def bind(self, start_sequence: int | None = None, end_sequence: int | None = None) -> None:
        """Create the partitions' durable consumers if missing (from ``start_sequence``; None: the first
        event), bind to them and start fetching; with ``end_sequence``, stop at it."""
        if self.feed is not None:
            await self.feed.stop()
        feed = self._feeds.partitions(
            self.partition_consumers(),
            lambda consumer: start_sequence,
            ack_wait=self.policy.ack_wait,
            max_ack_pending=self.policy.batch_size * 4,
            fetch_size=max(10, self.policy.batch_size // len(self.partitions)),
            end_sequence=end_sequence,
            on_error=self._record_error,
        )
        await feed.start()
        self.feed = feed
        use_notices = optional_hook(self.projection, "use_snapshot_notices")
        if use_notices is not None and self._snapshot_notices is None:
            # One consumer per projection, shared by its runners (any runner can handle any story's notice).
            notices = self._feeds.snapshots(snapshot_consumer_name(self.consumer_prefix), self.policy.ack_wait)
            await notices.open()
            self._snapshot_notices = notices
            await use_notices(notices)  # type: ignore[misc]

    async def catch_up_archive(self, last: int, after: int = 0) -> int:
        """Apply the owned partitions' archived events in ``(after, last]``. Re-running is harmless (the guard)."""
        assert self.archive is not None
        self.progress.phase = "archive"
        self.progress.archive_last = last
        self.progress.archive_through = after
        applied_before = self.progress.applied
        async for segment in self.archive.rows(self.partitions, after, last):
            for start in range(0, len(segment), self.policy.batch_size):
                rows = segment[start : start + self.policy.batch_size]  # in sequence order: story order kept
                held = set(await self.dead_letters.held())
                events: dict[str, list[EventEnvelope]] = {}
                row_of: dict[tuple[str, int], ArchivedRow] = {}
                for row in rows:
                    story_id = story_of(row.subject)
                    if story_id in held:
                        continue  # read back from the log on release
                    try:
                        envelope = decode_event(row.data)
                    except EventDecodeError as error:
                        await self._park(story_id, 0, row.sequence, row.subject, error, 1, row.data)
                        held.add(story_id)
                        events.pop(story_id, None)
                        continue
                    events.setdefault(story_id, []).append(envelope)
                    row_of[(story_id, envelope.version)] = row
                await self._apply_archived(events, row_of)
                self.progress.archive_through = rows[-1].sequence
                self.progress.last_sequence = max(self.progress.last_sequence, rows[-1].sequence)
                await self.publish_progress()
        self.progress.archive_applied = self.progress.applied - applied_before
        self.progress.archive_through = last
        return self.progress.archive_applied

    async def _apply_archived(
        self, events: Mapping[str, Sequence[EventEnvelope]], row_of: Mapping[tuple[str, int], ArchivedRow]
    ) -> None:
        """Like a delivered batch: outages are waited out, a failing story is retried ``max_deliver``
        times, then its event is parked (archived events have no delivery to hand back)."""
        delay = self.policy.backoff_initial
        attempts = 1
        while events:
            try:
                failures = await self.project(events)
            except Retryable as error:
                self._record_error(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.backoff_max)
                continue
            if not failures:
                return
            for _, story_error in failures.values():
                self._record_error(story_error)
            if attempts >= self.policy.max_deliver:
                for story_id, (envelope, failure) in failures.items():
                    row = row_of.get((story_id, envelope.version))
                    sequence, subject = (row.sequence, row.subject) if row else (0, f"archive.{story_id}")
                    await self._park(
                        story_id, envelope.version, sequence, subject, failure, attempts, row.data if row else b""
                    )
                return
            attempts += 1
            events = {story_id: events[story_id] for story_id in failures}

    async def run(self, stop: asyncio.Event) -> None:
        """Pull, apply, acknowledge until ``stop`` is set; outages are waited out, never skipped."""
        while not stop.is_set():
            self._heartbeat()
            try:
                if self.progress.paused_by or time.monotonic() >= self._next_control_check:
                    # The pause and release keys: read at most every PAUSE_POLL_SECONDS rather than
                    # before every batch; every time while paused.
                    self._next_control_check = time.monotonic() + PAUSE_POLL_SECONDS
                    if self.control is not None and await self._paused():
                        await self.publish_progress()
                        await asyncio.sleep(PAUSE_POLL_SECONDS)
                        continue
                    await self._apply_releases()
                assert self.feed is not None, "start() first"
                try:
                    msgs = await self.feed.next_batch(self.policy.batch_size, self.policy.fetch_timeout)
                except TimeoutError:
                    await self._idle()
                    self._recovered()
                    await self.publish_progress()
                    continue
                await self.process_until_done(msgs, stop)
                if self._tick is not None:
                    await self._tick()  # type: ignore[misc]
                self._recovered()
                await self.publish_progress()
            except ConnectionInterrupted as error:  # the client reconnects by itself: look again soon
                self._record_error(error)
                await asyncio.sleep(self.policy.backoff_initial)
            except Retryable as error:
                self._record_error(error)
                await asyncio.sleep(self.policy.backoff_max)
            except (TimeoutError, OSError) as error:
                # A server did not answer (an outage longer than a request's timeout): wait it out too
                self._record_error(BackendUnavailable(f"no answer while projecting {self.id}: {error!r}"))
                await asyncio.sleep(self.policy.backoff_max)

    async def close(self) -> None:
        if self.feed is not None:
            with contextlib.suppress(Exception):
                await self.feed.stop()
        if self._snapshot_notices is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_notices.close()
        with contextlib.suppress(Exception):
            await self.publish_progress(force=True)
        close_projection = optional_hook(self.projection, "close")
        closers = [self.checkpoints.close, self._feeds.close, *([self.control.close] if self.control else [])]
        for closer in [*([close_projection] if close_projection else []), *closers]:
            with contextlib.suppress(Exception):
                await closer()  # type: ignore[misc]

    async def process_until_done(self, msgs: list[Delivery], stop: asyncio.Event) -> None:
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
        """A rebuild owns the targets: stay off them, and say so (see projections/rebuild.py)."""
        assert self.control is not None
        job = await self.control.pausing_job() or ""
        if job != self.progress.paused_by:  # a change: 0 for the rebuild that ended, 1 for the new one
            m = metrics()
            if self.progress.paused_by:
                m.projector_paused.set(0, self.names.label, self.progress.paused_by)
            m.projector_paused.set(1 if job else 0, self.names.label, job)
            self.progress.paused_by = job
        if not job:
            return False
        await self.control.acknowledge_pause(job, self.feed.names if self.feed else [], PAUSE_ACK_TTL)
        return True

    # --- one batch ------------------------------------------------------------------------------

    async def process(self, msgs: Sequence[Delivery]) -> None:
        started, started_ns = time.perf_counter(), time.time_ns()
        self.progress.batches += 1
        self.progress.delivered += len(msgs)
        held = await self.dead_letters.held()
        m, label = metrics(), self.names.label
        m.parked.set(len(held), label)
        parked_before = self.progress.parked
        events: dict[str, list[EventEnvelope]] = {}
        msg_of: dict[tuple[str, int], Delivery] = {}
        msgs_of: dict[str, list[Delivery]] = {}
        acknowledge: list[Delivery] = []
        waiting: list[Delivery] = []  # behind a failing event of the same story: redelivered later
        failing: set[str] = set()
        for msg in msgs:
            story_id = story_of(msg.subject)
            if story_id in held:
                acknowledge.append(msg)  # kept in the log; read back from it on release
                m.projected_events.inc(label, "held")
                continue
            if story_id in failing:
                waiting.append(msg)
                continue
            try:
                envelope = decode_event(msg.data)
            except EventDecodeError as error:
                failing.add(story_id)
                await self._failed(story_id, 0, msg, error, waiting, acknowledge)
                continue
            events.setdefault(story_id, []).append(envelope)
            msg_of[(story_id, envelope.version)] = msg
            msgs_of.setdefault(story_id, []).append(msg)
        failures = await self.project(events, self._positions(msgs))
        for story_id, (envelope, failure) in failures.items():
            story_msgs = msgs_of.pop(story_id)
            culprit = msg_of.get((story_id, envelope.version), story_msgs[0])
            await self._failed(story_id, envelope.version, culprit, failure, waiting, acknowledge)
            waiting.extend(msg for msg in story_msgs if msg is not culprit)
        for story_msgs in msgs_of.values():
            acknowledge.extend(story_msgs)
        self._record_lag(acknowledge)
        assert self.feed is not None
        await self.feed.acknowledge(acknowledge)
        await self.feed.retry_later(waiting, self.policy.backoff_max)
        if acknowledge:
            last = max(msg.metadata.sequence.stream for msg in acknowledge)
            self.progress.last_sequence = max(self.progress.last_sequence, last)
        self._observe_batch(msgs, acknowledge, started)
        if self.progress.parked != parked_before:
            m.parked.set(len(held) + self.progress.parked - parked_before, label)
        if tracing.enabled():
            self._trace_applied(acknowledge, held, started_ns)

    def _positions(self, msgs: Sequence[Delivery]) -> dict[str, int]:
        """The last stream sequence of each partition consumer in the batch (``api.batch_positions``)."""
        positions: dict[str, int] = {}
        for msg in msgs:
            name = f"{self.settings.stream_name}.{self._consumer_of(msg.subject)}"
            positions[name] = max(positions.get(name, 0), msg.metadata.sequence.stream)
        return positions

    def _consumer_of(self, subject: str) -> str:
        partition = partition_of(subject) if subject.rsplit(".", 1)[-1].isdigit() else -1
        return partition_consumer_name(self.consumer_prefix, partition)

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        if self._own_versions is not None:
            own = await self._own_versions(list(story_ids))  # type: ignore[misc]
            return {story_id: int(own.get(story_id, 0) or 0) for story_id in story_ids}
        return await self.checkpoints.versions(self.id, list(story_ids))

    async def project(
        self, events: Mapping[str, Sequence[EventEnvelope]], positions: Mapping[str, int] | None = None
    ) -> dict[str, tuple[EventEnvelope, Exception]]:
        """Apply what is new of each story's events; returns the stories that failed (event, error)."""
        if not events:
            return {}
        delivered = {story_id: len(story_events) for story_id, story_events in events.items()}
        events = {story_id: distinct_versions(story_events) for story_id, story_events in events.items()}
        versions = await self.applied_versions(list(events))
        batch: dict[str, list[EventEnvelope]] = {}
        failures: dict[str, tuple[EventEnvelope, Exception]] = {}
        duplicates = healed = 0
        for story_id, story_events in events.items():
            current = versions.get(story_id, 0)
            fresh = [e for e in story_events if e.version > current]
            duplicates += delivered[story_id] - len(fresh)
            if not fresh:
                continue
            if any(e.version != current + 1 + i for i, e in enumerate(fresh)):
                # Events missing before or between those at hand (a released story, a lost
                # checkpoint, a redelivery after a gap): the log has them all, in order.
                at_hand = len(fresh)
                fresh = await read_log(self.store, story_id, current, fresh[-1].version)
                healed += max(0, len(fresh) - at_hand)
            if any(e.version != current + 1 + i for i, e in enumerate(fresh)):
                failures[story_id] = (fresh[0], ProjectionGap(f"story {story_id!r}: the log has a gap after {current}"))
                continue
            batch[story_id] = fresh
        self._count(duplicate=duplicates, healed=healed)
        if not batch:
            return failures
        token = applying_at(positions or {})
        try:
            done = await self._apply(batch, failures)
        finally:
            done_applying(token)
        if self._own_versions is None:
            await self.checkpoints.advance(self.id, done)
        applied = sum(v - versions.get(s, 0) for s, v in done.items())
        self.progress.applied += applied
        self._count(applied=applied)
        self._record_rate(applied)
        return failures

    async def _apply(
        self, batch: dict[str, list[EventEnvelope]], failures: dict[str, tuple[EventEnvelope, Exception]]
    ) -> dict[str, int]:
        try:
            await self.projection.apply(_frozen(batch))
            return {story_id: story_events[-1].version for story_id, story_events in batch.items()}
        except Retryable:
            raise
        except Exception as error:  # a target's: any exception but Retryable is the data's
            if len(batch) == 1 and len(next(iter(batch.values()))) == 1:
                story_id, (envelope,) = next(iter(batch.items()))
                failures[story_id] = (envelope, error)
                return {}
            return await self._one_by_one(batch, failures)

    async def _one_by_one(
        self, batch: Mapping[str, list[EventEnvelope]], failures: dict[str, tuple[EventEnvelope, Exception]]
    ) -> dict[str, int]:
        """Find the failing events: each story alone, and a failing story event by event."""
        done: dict[str, int] = {}
        for story_id, story_events in batch.items():
            try:
                await self.projection.apply({story_id: tuple(story_events)})
                done[story_id] = story_events[-1].version
                continue
            except Retryable:
                raise
            except Exception:  # narrowed below, event by event
                pass
            for envelope in story_events:
                try:
                    await self.projection.apply({story_id: (envelope,)})
                except Retryable:
                    raise
                except Exception as error:  # the poison event
                    failures[story_id] = (envelope, error)
                    break
                done[story_id] = envelope.version
                if self._own_versions is None:
                    await self.checkpoints.advance(self.id, {story_id: envelope.version})
        return done

    async def _failed(
        self,
        story_id: str,
        version: int,
        msg: Delivery,
        error: Exception,
        waiting: list[Delivery],
        acknowledge: list[Delivery],
    ) -> None:
        """An event that fails for a reason of its own: retried, then parked in the dead-letter stream."""
        sequence = msg.metadata.sequence.stream
        key = (story_id, sequence)
        attempts = self._failures.get(key, 0) + 1
        self._failures[key] = attempts
        self._record_error(error)
        if attempts < self.policy.max_deliver:
            waiting.append(msg)
            return
        if not version:
            with contextlib.suppress(EventDecodeError):
                version = decode_event(msg.data).version
        await self._park(story_id, version, sequence, msg.subject, error, attempts, msg.data)
        self._failures.pop(key, None)
        acknowledge.append(msg)

    async def _park(
        self, story_id: str, version: int, sequence: int, subject: str, error: Exception, attempts: int, data: bytes
    ) -> None:
        await self.dead_letters.park(
            ParkedEvent(
                story_id=story_id,
                version=version,
                stream_sequence=sequence,
                subject=subject,
                consumer=self._consumer_of(subject),
                error=f"{type(error).__name__}: {error}",
                deliveries=attempts,
                parked_at=now_iso(),
                projection=self.names.parked_as,
            ),
            data,
        )
        self.progress.parked += 1
        log.warning(
            "projection %s: parked the event at stream sequence %s after %s deliveries: %s",
            self.worker, sequence, attempts, error, extra={"story_id": story_id},
        )  # fmt: skip
        metrics().parked_total.inc(self.names.label)

    # --- releases (dlq retry|skip) ----------------------------------------------------------------

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
            if parked.subject.rsplit(".", 1)[-1].isdigit() and partition_of(parked.subject) not in self.partitions:
                continue  # another runner owns that story
            await self._release(parked, skip=action == "skip")

    async def _release(self, parked: ParkedEvent, *, skip: bool) -> None:
        story_id = parked.story_id
        start = (await self.applied_versions([story_id])).get(story_id, 0)
        envelopes: list[EventEnvelope] = []
        previous = 0
        try:
            async for sequence, data in self.store.read_raw(story_id):
                # The parked event: by its version when it had one (it may have been read from the log
                # rather than delivered), else (undecodable) by the delivered sequence.
                by_version = parked.version and previous + 1 == parked.version
                parked_here = by_version or (not parked.version and sequence == parked.stream_sequence)
                # On skip, a stand-in: it advances the version and carries no change (actor "dlq-skip").
                envelope = skipped_event(story_id, previous + 1) if skip and parked_here else decode_event(data)
                previous = envelope.version
                if envelope.version > start:
                    envelopes.append(envelope)
        except EventDecodeError as error:
            self._record_error(error)
            await self.dead_letters.park(replace(parked, error=str(error), parked_at=now_iso()), b"")
            await self.dead_letters.drop_release(story_id)
            return
        failures = await self.project({story_id: envelopes}) if envelopes else {}
        if story_id in failures:
            self._record_error(failures[story_id][1])
            await self.dead_letters.drop_release(story_id)
            return
        await self.dead_letters.released(story_id)

    # --- progress, metrics, traces ----------------------------------------------------------------

    def _count(self, **outcomes: int) -> None:
        m = metrics()
        for outcome, amount in outcomes.items():
            if amount:
                m.projected_events.inc(self.names.label, outcome, amount=amount)
        self.progress.skipped_duplicates += outcomes.get("duplicate", 0)
        self.progress.healed_from_log += outcomes.get("healed", 0)

    def _record_rate(self, applied: int) -> None:
        now = time.monotonic()
        self._rate_window.append((now, applied))
        self._rate_window = [(t, n) for t, n in self._rate_window if now - t <= 10.0]
        span = max(now - self._rate_window[0][0], 1.0)
        self.progress.rate = round(sum(n for _, n in self._rate_window) / span, 1)

    def _record_lag(self, msgs: Sequence[Delivery]) -> None:
        now = datetime.now(UTC)
        self._lags.extend((now - msg.metadata.timestamp).total_seconds() for msg in msgs)
        if self._lags:
            ordered = sorted(self._lags)
            self.progress.lag_p50_ms = round(ordered[len(ordered) // 2] * 1000, 1)
            self.progress.lag_p99_ms = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)

    def _observe_batch(self, msgs: Sequence[Delivery], acknowledged: Sequence[Delivery], started: float) -> None:
        """Batch size, apply time, redeliveries and, per partition, the lag after this batch."""
        m, label = metrics(), self.names.label
        m.apply_duration.observe(time.perf_counter() - started, label)
        m.batch_size.observe(len(msgs), label)
        redelivered = sum(1 for msg in msgs if getattr(msg.metadata, "num_delivered", 1) > 1)
        if redelivered:
            m.redeliveries.inc(label, amount=redelivered)
        if not self.names.parked_as:  # the partition lag gauges are the built-in read models'
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
        spans: Mapping[str, tuple[int, int]] = getattr(self.projection, "write_spans", {}) or {}
        tracing.applied(traced, started_ns, spans, self.names.label)

    async def _idle(self) -> None:
        """Nothing came within the fetch timeout: the owned partitions have no lag. Every few seconds
        the parked count is read again (a release, or a park by another runner, changes it)."""
        if self._tick is not None:
            await self._tick()  # type: ignore[misc]
        m = metrics()
        if not self.names.parked_as:
            for partition in self.partitions:
                m.lag_events.set(0, str(partition))
                m.lag_seconds.set(0, str(partition))
        if time.monotonic() >= self._next_parked_check:
            self._next_parked_check = time.monotonic() + PARKED_CHECK_SECONDS
            m.parked.set(len(await self.dead_letters.held()), self.names.label)

    def _heartbeat(self) -> None:
        now = time.time()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + 1.0
            metrics().projector_heartbeat.set(now, self.names.label)

    def _recovered(self) -> None:
        """A round went through: an error recorded before it is over (unless an event still fails)."""
        if self.progress.last_error and not self._failures:
            self.progress.last_error = ""
            self.progress.last_error_cleared_at = now_iso()

    async def publish_progress(self, *, force: bool = False) -> None:
        """At most every PROGRESS_EVERY while busy, at least every HEARTBEAT_SECONDS: for ``projections
        status`` (and, with a control, its consumer rows), read without going through Ray."""
        now = time.monotonic()
        if not force and now < self._next_publish:
            return
        self._next_publish = now + PROGRESS_EVERY
        self.progress.updated_at = now_iso()
        self.progress.heartbeat = time.time()
        record = progress_record(self)
        with contextlib.suppress(Retryable):
            if self.names.registered or self.archive is not None:  # its row, or where its catch-up resumes
                await self.checkpoints.publish_progress(self.id, self.worker, record)
            if self.control is not None:
                await self.control.publish_status(self.worker, record)

    def _record_error(self, error: BaseException) -> None:
        metrics().projection_errors.inc(self.names.label)
        self.progress.last_error = str(error)[:500]
        self.progress.last_error_at = now_iso()
        self.progress.last_error_cleared_at = ""
        log.warning("projection %s: %s", self.worker, error)


def progress_record(runner: ProjectionRunner) -> dict[str, Any]:
    return {**asdict(runner.progress), "partitions": runner.partitions}


async def verify_projection(
    projection: Projection, store: EventStore, story_ids: Sequence[str]
) -> dict[str, list[str]]:
    """The projection's own ``verify`` hook against a replay of each story; {story: differences} (empty: all equal)."""
    hook = optional_hook(projection, "verify")
    if hook is None:
        raise NotImplementedError(f"projection {projection.name} has no verify hook")
    out: dict[str, list[str]] = {}
    for story_id in story_ids:
        events = [stored.envelope async for stored in store.read(story_id)]
        differences = list(await hook(story_id, events))  # type: ignore[misc]
        if differences:
            out[story_id] = differences
    return out


def distinct_versions(envelopes: Sequence[EventEnvelope]) -> list[EventEnvelope]:
    """A redelivery can put the same event into one batch twice: one copy per version, in order."""
    return sorted({e.version: e for e in reversed(envelopes)}.values(), key=lambda e: e.version)


def skipped_event(story_id: str, version: int) -> EventEnvelope:
    """Stand-in for an event skipped by ``dlq skip``: it advances the version and changes nothing else."""
    return EventEnvelope(f"skipped-{version}", story_id, version, datetime.now(UTC), Event(), "", "dlq-skip")


def _frozen(batch: Mapping[str, list[EventEnvelope]]) -> dict[str, tuple[EventEnvelope, ...]]:
    return {story_id: tuple(story_events) for story_id, story_events in batch.items()}
