"""A rebuild's replayers: runners of the graph with their own consumers from the start of the log
(and the archive before it), their states in memory, stopping at the job's end sequence. The job that drives
them (pause, wipe, replay, hand-over) is :mod:`fleet_actors.jobs.rebuild_job`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet_actors.adapters.archive import Archive, Manifest
from fleet_actors.codec import decode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.observability.metrics import metrics
from fleet_actors.projections.policy import ProjectorPolicy, owned_partitions
from fleet_actors.projections.read_models_projection import GraphProjection
from fleet_actors.projections.runner import ProjectionRunner, RunnerNames
from fleet_actors.settings import Settings

REPLAY_POLICY = ProjectorPolicy(batch_size=1000, fetch_timeout=1.0, max_deliver=3, ack_wait=120.0)


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


class Replayer(ProjectionRunner):
    """A runner for one rebuild: the graph (no documents) from its own consumers from the start, its
    states in memory, stopping at the job's end sequence."""

    projection: GraphProjection

    def __init__(self, projection: GraphProjection, settings: Settings, index: int, count: int, *, job_id: str,
                 **kwargs: Any) -> None:  # fmt: skip
        names = RunnerNames(
            id=f"rebuild-{job_id}", consumer_prefix=f"rebuild-{job_id}", worker=replay_consumer(job_id, index, count),
            parked_as="", registered=False, metrics_label=f"rebuild-{index}-of-{count}",
        )  # fmt: skip
        super().__init__(projection, settings, index, count, names=names, **kwargs)
        self.done_events = 0
        #: with an archive (FLEET_ARCHIVE_URL): the archive and its manifest; its events are replayed first
        self.rebuild_archive: Archive | None = None
        self.archive_manifest: Manifest | None = None

    async def publish_progress(self, *, force: bool = False) -> None:
        """The job reads a replayer's progress from its actor (``done_events``): nothing to publish."""

    async def use_archive(self, archive: Archive) -> None:
        self.rebuild_archive = archive
        self.archive_manifest = await archive.manifest()

    async def replay_until(self, end_sequence: int) -> int:
        """Apply every owned event up to ``end_sequence``; returns how many were delivered."""
        if self.rebuild_archive is not None and self.archive_manifest is not None:
            await self.replay_archive(self.rebuild_archive, self.archive_manifest, end_sequence)
        # From the start of the log, but archived events come from the archive: with one, the stream
        # part starts right after it. Each partition stops at the end: the live projectors take over.
        archived = self.archive_manifest.last_sequence if self.archive_manifest is not None else 0
        await self.bind(archived + 1 if archived else None, end_sequence=end_sequence)
        feed = self.feed
        assert feed is not None
        while True:
            try:
                msgs = await feed.next_batch(self.policy.batch_size, self.policy.fetch_timeout)
            except TimeoutError:
                if feed.finished() or await feed.drained():
                    break
                continue
            await self.process_until_done(msgs, asyncio.Event())
            self._replayed(len(msgs))
        await self.project_snapshots_until_empty()
        return self.done_events

    async def project_snapshots_until_empty(self) -> None:
        if self.projection.snapshots is None:
            return
        while await self.projection.link_snapshots(retry_after=self.policy.backoff_max):
            pass

    async def replay_archive(self, archive: Archive, manifest: Manifest, end_sequence: int) -> int:
        """Apply every archived event of the replayer's partitions up to ``end_sequence``, in order.

        The replayer's consumer starts right after the archive (``manifest.last_sequence + 1``), so
        the two parts meet without gap or overlap. Re-running after a kill is harmless: the graph's
        version guard skips what was applied.
        """
        owned = [str(p) for p in self.partitions]
        applied = 0
        for table in await asyncio.to_thread(list, archive.iter_tables(manifest, up_to=end_sequence)):
            # The partition is the stored subject's last token ({prefix}.{story}.{type}.{partition}).
            subjects = table.column("subject").to_pylist()
            mine = [i for i, subject in enumerate(subjects) if subject.rsplit(".", 1)[-1] in owned]
            if not mine:
                continue
            data = table.column("data").take(mine).to_pylist()
            by_story: dict[str, list[EventEnvelope]] = {}
            for raw in data:
                envelope = decode_event(raw)
                by_story.setdefault(envelope.story_id, []).append(envelope)
            for story_id, envelopes in by_story.items():
                applied += await self._apply_chunks(story_id, envelopes)
        self._replayed(applied)
        return applied

    async def replay_stories(self, story_ids: Sequence[str], end_sequence: int) -> int:
        """Some stories only: read each from the log (up to the end) and apply in chunks."""
        for story_id in story_ids:
            envelopes: list[EventEnvelope] = [
                stored.envelope async for stored in self.store.read(story_id) if stored.sequence <= end_sequence
            ]
            self._replayed(await self._apply_chunks(story_id, envelopes))
        return self.done_events

    async def _apply_chunks(self, story_id: str, envelopes: Sequence[EventEnvelope]) -> int:
        """A story's events in order, a batch at a time, straight to the projection (the graph's
        transaction skips what it holds)."""
        for start in range(0, len(envelopes), self.policy.batch_size):
            await self.projection.apply({story_id: tuple(envelopes[start : start + self.policy.batch_size])})
        return len(envelopes)

    def _replayed(self, events: int) -> None:
        self.done_events += events
        metrics().rebuild_events.inc(self.names.label, amount=events)


Progress = Callable[[int, int, float], None]


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def assert_partitions(settings: Settings, workers: int) -> None:
    owned_partitions(workers - 1, workers, settings.partitions)  # raises if workers > partitions
