"""The archiver: copies the stream into archive segments, then (with a max age) deletes what is safe.

Archiving is keyed by stream sequence: the manifest's last sequence is the resume point, each
segment covers the next closed range, and the manifest is committed only after the segment file
is complete. A run killed at any point resumes without duplicates (a file written but never
committed is an orphan, removed by the next run).

Retention is done here and nowhere else (the stream keeps ``max_age=0``): events older than
FLEET_STREAM_MAX_AGE are deleted only once (a) they are archived and the segments holding them
verify against their checksums, and (b) every affected story has a snapshot covering everything
deleted. Each story's head event is never deleted, so the per-story concurrency check keeps
working and actors, projectors and rebuilds work from the stream alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from fleet_actors.adapters.archive.segments import Archive, Manifest, RawEvent, stored_time
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.errors import ArchiveCorrupted, BackendUnavailable, InvalidCommand, StoryError
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.snapshot_store import SnapshotStore
from fleet_actors.settings import Settings

T = TypeVar("T")


class StreamLog(Protocol):
    """What the archiver needs of the stream (``adapters/jetstream/retention.py``)."""

    async def bounds(self) -> tuple[int, int]: ...

    def read_range(self, first: int, last: int) -> AsyncIterator[RawEvent]: ...

    async def delete_story_below(self, story_id: str, keep_from: int) -> None: ...

    async def publish_watermark(self, cut: int) -> None: ...

    async def close(self) -> None: ...


log = logging.getLogger(__name__)

SEGMENT_EVENTS = 50_000


@dataclass
class ArchiveReport:
    segments: int = 0
    events: int = 0
    seconds: float = 0.0
    archived_through: int = 0
    orphans_removed: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass
class RetentionReport:
    purged_through: int = 0
    stories: int = 0
    snapshots_taken: int = 0
    #: stories whose events stay because no snapshot could be taken (story id -> reason)
    kept: dict[str, str] = field(default_factory=dict)
    waiting: str = ""


async def _uninterrupted(function: Callable[..., T], *args: Any) -> T:
    """Run blocking file work in a thread; if the caller is cancelled meanwhile, let the work finish
    before the cancellation goes on, so that nothing keeps writing behind a stopped archiver."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


class Archiver:
    """Archive the stream and apply retention; one archiver per stream at a time."""

    def __init__(
        self,
        settings: Settings,
        retention: StreamLog,
        stream: EventStore,
        history: EventStore,
        snapshots: SnapshotStore,
        archive: Archive,
        *,
        segment_events: int = SEGMENT_EVENTS,
    ) -> None:
        """Built by ``fleet_actors.composition.open_archiver`` (or ``archiver_on`` for a connection at hand)."""
        if segment_events < 1:
            raise InvalidCommand("a segment holds at least one event", field="segment_events")
        self.settings = settings
        self.retention = retention
        self.archive = archive
        self.segment_events = segment_events
        #: the stream alone (story heads) and the full history through the archive (snapshots)
        self.stream = stream
        self.history = history
        self.snapshots = snapshots

    async def close(self) -> None:
        await self.retention.close()

    # --- archiving ------------------------------------------------------------------------------

    async def archive_once(
        self, *, up_to: int | None = None, progress: Callable[[int, int, float], None] | None = None
    ) -> ArchiveReport:
        """Archive everything stored so far (or up to ``up_to``) in segments; resumes from the manifest."""
        started = time.monotonic()
        report = ArchiveReport()
        manifest = await self.archive.manifest()
        for orphan in await asyncio.to_thread(self.archive.orphans_sync, manifest):
            await asyncio.to_thread(self.archive.remove_sync, orphan)
            report.orphans_removed += 1
        first_seq, last_seq = await self.retention.bounds()
        end = last_seq if up_to is None else min(up_to, last_seq)
        start = manifest.last_sequence + 1
        if last_seq and first_seq > start and manifest.purged_through < first_seq - 1:
            raise ArchiveCorrupted(
                f"stream {self.settings.stream_name} starts at sequence {first_seq}, but archive "
                f"{self.archive.display_url} ends at {manifest.last_sequence}: events {start}..{first_seq - 1} "
                "were deleted without being archived (a JetStream max_age, or a purge by hand)"
            )
        while start <= end:
            stop = min(start + self.segment_events - 1, end)
            rows = [row async for row in self.retention.read_range(start, stop)]
            info = await _uninterrupted(self.archive.write_segment_sync, start, stop, rows)
            manifest.segments.append(info)
            # The commit point: until the manifest names the segment, it does not exist.
            await _uninterrupted(self.archive.commit_manifest_sync, manifest)
            report.segments += 1
            report.events += len(rows)
            if progress:
                progress(stop, end, time.monotonic() - started)
            start = stop + 1
        report.archived_through = manifest.last_sequence
        report.seconds = time.monotonic() - started
        return report

    # --- retention ------------------------------------------------------------------------------

    async def _cut(self, manifest: Manifest, horizon: datetime) -> int:
        """The highest archived sequence such that every event up to it was stored before ``horizon``."""
        cut = manifest.purged_through
        for info in manifest.segments:
            if info.last_sequence <= manifest.purged_through:
                continue
            last_stored = stored_time(info.last_stored_at)
            if last_stored is None or last_stored < horizon:
                cut = info.last_sequence
                continue
            older = await asyncio.to_thread(self.archive.last_sequence_stored_before_sync, info, horizon)
            if older is not None:
                cut = older
            break
        return cut

    async def enforce_retention(self, *, now: datetime | None = None) -> RetentionReport:
        """Delete events older than FLEET_STREAM_MAX_AGE that are archived, verified and snapshotted."""
        report = RetentionReport()
        max_age = self.settings.stream_max_age
        manifest = await self.archive.manifest()
        report.purged_through = manifest.purged_through
        if not max_age:
            report.waiting = "no FLEET_STREAM_MAX_AGE: events are kept in the stream"
            return report
        horizon = (now or datetime.now(UTC)) - timedelta(seconds=max_age)
        cut = await self._cut(manifest, horizon)
        if cut <= manifest.purged_through:
            report.waiting = "nothing archived is older than the horizon"
            return report
        # (a) the archive holding the events to delete must verify, else deletion waits.
        touched = [
            s for s in manifest.segments if s.last_sequence > manifest.purged_through and s.first_sequence <= cut
        ]
        for info in touched:
            problem = await asyncio.to_thread(self.archive.verify_segment_sync, info)
            if problem:
                raise ArchiveCorrupted(f"archive segment {info.name}: {problem}; nothing is deleted until it is fixed")
        #: story -> (first, last) of its events in (purged_through, cut]
        stories: dict[str, tuple[int, int]] = {}
        for info in touched:
            for story, span in info.stories.items():
                if span[0] <= cut and span[1] > manifest.purged_through:
                    first, last = stories.get(story, (span[0], 0))
                    stories[story] = (min(first, span[0]), max(last, min(span[1], cut)))
        for story, sequence in manifest.held_heads.items():
            first, last = stories.get(story, (sequence, sequence))
            stories[story] = (min(first, sequence), max(last, sequence))
        held: dict[str, int] = {}
        # (b) every affected story gets a snapshot covering all it loses; its head always stays.
        purges: list[tuple[str, int]] = []
        for story, (_, last_old) in sorted(stories.items()):
            head = await self.stream.last_sequence(story)
            keep_from = min(last_old + 1, head)  # delete sequences below this one
            if head <= last_old:
                held[story] = head  # its head is old too: it stays, and goes once the story moves on
            if keep_from <= 1:
                continue
            try:
                if not await self._snapshot_covers(story, keep_from - 1):
                    await StoryRuntime(story, self.history, snapshots=self.snapshots).rebuild_state()
                    report.snapshots_taken += 1
                    if not await self._snapshot_covers(story, keep_from - 1):
                        raise BackendUnavailable("the snapshot could not be saved")
            except StoryError as error:
                report.kept[story] = error.message
                continue
            purges.append((story, keep_from))
        # A story left out keeps its old events: the manifest's mark stays below them so that the
        # next run tries those stories again (stories already done are purged again, harmlessly).
        done_through = min([cut, *(stories[s][0] - 1 for s in report.kept)])
        if report.kept:
            report.waiting = f"stories {sorted(report.kept)} have no usable snapshot"
        if purges:
            # Readers of the composite store learn from the stream's metadata how far deletion may have gone.
            await self.retention.publish_watermark(cut)
        for story, keep_from in purges:
            await self.retention.delete_story_below(story, keep_from)
        if done_through > manifest.purged_through or held != manifest.held_heads:
            manifest.purged_through = max(done_through, manifest.purged_through)
            manifest.held_heads = held
            await asyncio.to_thread(self.archive.commit_manifest_sync, manifest)
        report.purged_through = manifest.purged_through
        report.stories = len(purges)
        return report

    async def _snapshot_covers(self, story_id: str, sequence: int) -> bool:
        snapshot = await self.snapshots.latest(story_id)
        return snapshot is not None and snapshot.last_sequence >= sequence

    async def run_once(self, *, now: datetime | None = None) -> tuple[ArchiveReport, RetentionReport]:
        """Archive, then apply retention: the order is what keeps deletion behind archiving."""
        archived = await self.archive_once()
        return archived, await self.enforce_retention(now=now)

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        """Archive and apply retention every ``interval`` seconds until ``stop``; errors wait for the next pass."""
        while not stop.is_set():
            try:
                archived, retention = await self.run_once()
                log.info("archived %s events; purged through %s", archived.events, retention.purged_through)
            except StoryError as error:
                log.warning("archiver pass failed (deletion waits): %s", error.message)
            except Exception:  # unforeseen: the next pass tries again, the loop never ends on it
                log.exception("archiver pass failed unexpectedly (deletion waits)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
