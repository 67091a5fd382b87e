"""The runner of a user projection (``projections/api.py``): what the built-in projector does for the
graph and the documents, for any target.

- Durable consumers per partition, ``proj-{name}-v{version}-partition-{p}``; runner ``i`` of ``n``
  owns the partitions ``p % n == i`` (JetStream delivers each story's events to one runner, in order).
- Catch-up from the beginning: with an archive (FLEET_ARCHIVE_URL) the archived events of the owned
  partitions are applied first, then the consumers start right after the archive's last sequence;
  without one they start at the first event. The version guard makes the seam exact: an event at
  or below a story's applied version is skipped, a story whose first new event does not follow it
  is caught up from the log (``EventStore.read``, which reads through the archive).
- The version guard reads the projection's own ``applied_versions`` when it has one (exactly once:
  its checkpoint commits with its writes), otherwise the :class:`ProjectionCheckpoints` port, which
  is advanced after ``apply`` returns (at least once across a crash between the two: such a
  projection's ``apply`` must tolerate seeing a story's last batch again; see docs/projections.md).
- Batching: one ``apply`` per delivered batch (up to ``policy.batch_size`` events).
- Poison events: a batch that fails is split by story, a failing story event by event; the failing
  event is retried ``max_deliver`` times, then parked in the dead-letter stream with the
  projection's name, and only its story is held (``fleet-actors dlq ... --projection NAME``).
- Progress (phase, applied, rate, archive position) is published for ``projections status``.

This is a second mechanism beside :class:`fleet_actors.projections.projector.Projector`, which
still runs the graph and the documents (docs/projections.md says what remains to unify them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from fleet_actors.codec import decode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import (
    BackendUnavailable,
    ConnectionInterrupted,
    EventDecodeError,
    ProjectionGap,
    Retryable,
)
from fleet_actors.ports.checkpoints import ArchivedEvents, ArchivedRow, ProjectionCheckpoints
from fleet_actors.ports.event_feed import Delivery, EventFeed, Feeds, PartitionConsumer, partition_of, story_of
from fleet_actors.ports.event_store import EventStore
from fleet_actors.projections.api import Projection, consumer_prefix, describe, optional_hook, projection_id, validate
from fleet_actors.projections.dead_letters import DeadLetters, ParkedEvent, now_iso
from fleet_actors.projections.policy import DEFAULT_POLICY, ProjectorPolicy, owned_partitions, partition_consumer_name
from fleet_actors.projections.projector import distinct_versions, read_log, skipped_event
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: seconds between progress publications
PROGRESS_EVERY = 1.0


class ProjectionMetrics(Protocol):
    """The seam for metrics (issue #20's hooks plug in here; the default records nothing)."""

    def batch_applied(self, projection: str, events: int, seconds: float) -> None: ...

    def event_parked(self, projection: str, story_id: str) -> None: ...


class NoMetrics:
    def batch_applied(self, projection: str, events: int, seconds: float) -> None:
        pass

    def event_parked(self, projection: str, story_id: str) -> None:
        pass


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
        metrics: ProjectionMetrics | None = None,
    ) -> None:
        self.projection = validate(projection)
        self.settings = settings
        self.id = projection_id(projection)
        self.consumer_prefix = consumer_prefix(projection)
        self.worker = f"{self.consumer_prefix}-{index}-of-{count}"
        self.partitions = owned_partitions(index, count, settings.partitions)
        self.policy = policy
        self.progress = RunnerProgress(started_at=now_iso())
        self.metrics: ProjectionMetrics = metrics or NoMetrics()
        self._feeds = feeds
        self.store = store
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.archive = archive
        self.feed: EventFeed | None = None
        self._failures: dict[tuple[str, int], int] = {}
        self._own_versions = optional_hook(projection, "applied_versions")
        self._rate_window: list[tuple[float, int]] = []
        self._next_publish = 0.0

    # --- lifecycle ------------------------------------------------------------------------------

    def partition_consumers(self) -> list[PartitionConsumer]:
        return [
            PartitionConsumer(partition_consumer_name(self.consumer_prefix, p), p, self.settings.partition_filter(p))
            for p in self.partitions
        ]

    async def start(self) -> None:
        """Register, catch up from the archive (if any), then bind the live consumers right after it."""
        await self.checkpoints.register(
            self.id, {**describe(self.projection), "partitions": self.settings.partitions, "registered_at": now_iso()}
        )
        await self.dead_letters.ensure_stream()
        archived = await self.archive.last_sequence() if self.archive is not None else 0
        if archived:
            # After a restart, from where this runner's last published progress says it got to.
            previous = (await self.checkpoints.progress(self.id)).get(self.worker, {})
            done = int(previous.get("archive_through", 0)) if previous.get("partitions") == self.partitions else 0
            await self.catch_up_archive(archived, after=min(done, archived))
        self.progress.phase = "live"
        feed = self._feeds.partitions(
            self.partition_consumers(),
            lambda consumer: archived + 1 if archived else None,
            ack_wait=self.policy.ack_wait,
            max_ack_pending=self.policy.batch_size * 4,
            fetch_size=max(10, self.policy.batch_size // len(self.partitions)),
            on_error=self._record_error,
        )
        await feed.start()
        self.feed = feed
        await self.publish_progress(force=True)

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
            try:
                await self._apply_releases()
                assert self.feed is not None, "start() first"
                try:
                    msgs = await self.feed.next_batch(self.policy.batch_size, self.policy.fetch_timeout)
                except TimeoutError:
                    await self.publish_progress()
                    continue
                await self._process_until_done(msgs, stop)
                await self.publish_progress()
            except ConnectionInterrupted as error:
                self._record_error(error)
                await asyncio.sleep(self.policy.backoff_initial)
            except Retryable as error:
                self._record_error(error)
                await asyncio.sleep(self.policy.backoff_max)
            except (TimeoutError, OSError) as error:
                self._record_error(BackendUnavailable(f"no answer while projecting {self.id}: {error!r}"))
                await asyncio.sleep(self.policy.backoff_max)

    async def close(self) -> None:
        if self.feed is not None:
            with contextlib.suppress(Exception):
                await self.feed.stop()
        with contextlib.suppress(Exception):
            await self.publish_progress(force=True)
        for closer in (self.checkpoints.close, self._feeds.close):
            with contextlib.suppress(Exception):
                await closer()
        close_projection = optional_hook(self.projection, "close")
        if close_projection is not None:
            with contextlib.suppress(Exception):
                await close_projection()  # type: ignore[misc]

    async def _process_until_done(self, msgs: list[Delivery], stop: asyncio.Event) -> None:
        delay = self.policy.backoff_initial
        while True:
            try:
                await self.process(msgs)
                return
            except asyncio.CancelledError:
                if self.feed is not None:
                    self.feed.give_back(msgs)
                raise
            except Retryable as error:
                self._record_error(error)
                if stop.is_set():
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.backoff_max)
                if self.feed is not None:
                    await self.feed.still_working(msgs)

    # --- one batch ------------------------------------------------------------------------------

    async def process(self, msgs: Sequence[Delivery]) -> None:
        self.progress.batches += 1
        self.progress.delivered += len(msgs)
        held = await self.dead_letters.held()
        events: dict[str, list[EventEnvelope]] = {}
        msg_of: dict[tuple[str, int], Delivery] = {}
        msgs_of: dict[str, list[Delivery]] = {}
        acknowledge: list[Delivery] = []
        waiting: list[Delivery] = []
        failing: set[str] = set()
        for msg in msgs:
            story_id = story_of(msg.subject)
            if story_id in held:
                acknowledge.append(msg)  # kept in the log; read back from it on release
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
        failures = await self.project(events)
        for story_id, (envelope, failure) in failures.items():
            story_msgs = msgs_of.pop(story_id)
            culprit = msg_of.get((story_id, envelope.version), story_msgs[0])
            await self._failed(story_id, envelope.version, culprit, failure, waiting, acknowledge)
            waiting.extend(m for m in story_msgs if m is not culprit)
        for story_msgs in msgs_of.values():
            acknowledge.extend(story_msgs)
        assert self.feed is not None
        await self.feed.acknowledge(acknowledge)
        await self.feed.retry_later(waiting, self.policy.backoff_max)
        if acknowledge:
            last = max(m.metadata.sequence.stream for m in acknowledge)
            self.progress.last_sequence = max(self.progress.last_sequence, last)

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        if self._own_versions is not None:
            own = await self._own_versions(list(story_ids))  # type: ignore[misc]
            return {story_id: int(own.get(story_id, 0) or 0) for story_id in story_ids}
        return await self.checkpoints.versions(self.id, list(story_ids))

    async def project(
        self, events: Mapping[str, Sequence[EventEnvelope]]
    ) -> dict[str, tuple[EventEnvelope, Exception]]:
        """Apply what is new of each story's events; returns the stories that failed (event, error)."""
        if not events:
            return {}
        delivered = {story_id: len(story_events) for story_id, story_events in events.items()}
        events = {story_id: distinct_versions(story_events) for story_id, story_events in events.items()}
        versions = await self.applied_versions(list(events))
        batch: dict[str, list[EventEnvelope]] = {}
        failures: dict[str, tuple[EventEnvelope, Exception]] = {}
        for story_id, story_events in events.items():
            current = versions.get(story_id, 0)
            fresh = [e for e in story_events if e.version > current]
            self.progress.skipped_duplicates += delivered[story_id] - len(fresh)
            if not fresh:
                continue
            if any(e.version != current + 1 + i for i, e in enumerate(fresh)):
                # Events missing before or between those at hand (a released story, a lost
                # checkpoint, a redelivery after a gap): the log has them all, in order.
                at_hand = len(fresh)
                fresh = await self._read_log(story_id, current, fresh[-1].version)
                self.progress.healed_from_log += max(0, len(fresh) - at_hand)
            if any(e.version != current + 1 + i for i, e in enumerate(fresh)):
                failures[story_id] = (fresh[0], ProjectionGap(f"story {story_id!r}: the log has a gap after {current}"))
                continue
            batch[story_id] = fresh
        if not batch:
            return failures
        started = time.monotonic()
        try:
            await self.projection.apply(_frozen(batch))
            done = {story_id: story_events[-1].version for story_id, story_events in batch.items()}
        except Retryable:
            raise
        except Exception as error:  # a user's target: any exception but Retryable is the data's
            if len(batch) == 1 and len(next(iter(batch.values()))) == 1:
                story_id, (envelope,) = next(iter(batch.items()))
                failures[story_id] = (envelope, error)
                done = {}
            else:
                done = await self._one_by_one(batch, failures)
        if self._own_versions is None:
            await self.checkpoints.advance(self.id, done)
        applied = sum(v - versions.get(s, 0) for s, v in done.items())
        self.progress.applied += applied
        self._record_rate(applied)
        self.metrics.batch_applied(self.id, applied, time.monotonic() - started)
        return failures

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

    async def _read_log(self, story_id: str, after_version: int, up_to_version: int) -> list[EventEnvelope]:
        return await read_log(self.store, story_id, after_version, up_to_version)

    async def _failed(
        self,
        story_id: str,
        version: int,
        msg: Delivery,
        error: Exception,
        waiting: list[Delivery],
        acknowledge: list[Delivery],
    ) -> None:
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
        partition = partition_of(subject) if subject.rsplit(".", 1)[-1].isdigit() else -1
        await self.dead_letters.park(
            ParkedEvent(
                story_id=story_id,
                version=version,
                stream_sequence=sequence,
                subject=subject,
                consumer=partition_consumer_name(self.consumer_prefix, partition),
                error=f"{type(error).__name__}: {error}",
                deliveries=attempts,
                parked_at=now_iso(),
                projection=self.id,
            ),
            data,
        )
        self.progress.parked += 1
        self.metrics.event_parked(self.id, story_id)

    # --- releases (dlq retry|skip --projection) -------------------------------------------------

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

    # --- progress -------------------------------------------------------------------------------

    def _record_rate(self, applied: int) -> None:
        now = time.monotonic()
        self._rate_window.append((now, applied))
        self._rate_window = [(t, n) for t, n in self._rate_window if now - t <= 10.0]
        span = max(now - self._rate_window[0][0], 1.0)
        self.progress.rate = round(sum(n for _, n in self._rate_window) / span, 1)

    async def publish_progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_publish:
            return
        self._next_publish = now + PROGRESS_EVERY
        self.progress.updated_at = now_iso()
        with contextlib.suppress(Retryable):
            await self.checkpoints.publish_progress(self.id, self.worker, progress_record(self))

    def _record_error(self, error: BaseException) -> None:
        self.progress.last_error = str(error)[:500]
        self.progress.last_error_at = now_iso()
        log.warning("projection %s: %s", self.id, error)


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


def _frozen(batch: Mapping[str, list[EventEnvelope]]) -> dict[str, tuple[EventEnvelope, ...]]:
    return {story_id: tuple(story_events) for story_id, story_events in batch.items()}

