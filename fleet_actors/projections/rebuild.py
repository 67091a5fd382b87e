"""A rebuild's replayers: projectors with their own consumers from the start of the log (and the
archive before it), their states in memory, stopping at the job's end sequence. The job that drives
them (pause, wipe, replay, hand-over) is :mod:`fleet_actors.jobs.rebuild_job`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet_actors.adapters.archive import Archive, Manifest
from fleet_actors.codec import decode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.observability.metrics import metrics
from fleet_actors.ports.event_feed import PartitionConsumer
from fleet_actors.projections.policy import ProjectorPolicy, owned_partitions
from fleet_actors.projections.projector import Projector
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


class Replayer(Projector):
    """A projector for one rebuild: its own consumer from the start, state kept in memory."""

    def __init__(self, settings: Settings, index: int, count: int, *, job_id: str, **kwargs: Any) -> None:
        super().__init__(settings, index, count, **kwargs)
        self.name = replay_consumer(job_id, index, count)
        self.metrics_label = f"rebuild-{index}-of-{count}"
        self.consumer_prefix = f"rebuild-{job_id}"
        self._states: dict[str, StoryState] = {}
        self.done_events = 0
        #: with an archive (FLEET_ARCHIVE_URL): the archive and its manifest; its events are replayed first
        self.archive: Archive | None = None
        self.archive_manifest: Manifest | None = None

    async def use_archive(self, archive: Archive) -> None:
        self.archive = archive
        self.archive_manifest = await archive.manifest()

    async def _load_states(self, story_ids: list[str]) -> dict[str, StoryState]:
        return {s: self._states[s] for s in story_ids if s in self._states}

    async def _save_states(
        self, states: dict[str, StoryState], event_ids: list[str], offsets: Mapping[str, int]
    ) -> None:
        self._states.update(states)

    def start_sequence(self, consumer: PartitionConsumer, requested: int | None) -> int | None:
        # From the start of the log, but archived events come from the archive: with one, the stream
        # part starts right after it.
        archived = self.archive_manifest.last_sequence if self.archive_manifest is not None else 0
        return archived + 1 if archived else None

    async def replay_until(self, end_sequence: int) -> int:
        """Apply every owned event up to ``end_sequence``; returns how many were delivered."""
        if self.archive is not None and self.archive_manifest is not None:
            await self.replay_archive(self.archive, self.archive_manifest, end_sequence)
        # Each partition stops at the end: after it, the live projectors take over.
        await self.ensure_consumer(end_sequence=end_sequence)
        feed = self.feed
        assert feed is not None
        while True:
            try:
                msgs = await feed.next_batch(self.policy.batch_size, self.policy.fetch_timeout)
            except TimeoutError:
                if feed.finished() or await feed.drained():
                    break
                continue
            await self._process_until_done(msgs, asyncio.Event())
            self.done_events += len(msgs)
            metrics().rebuild_events.inc(self.metrics_label, amount=len(msgs))
        await self.project_snapshots_until_empty()
        return self.done_events

    async def project_snapshots_until_empty(self) -> None:
        while await self.project_snapshots():
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
                for start in range(0, len(envelopes), self.policy.batch_size):
                    chunk = envelopes[start : start + self.policy.batch_size]
                    state = fold(self._states.get(story_id) or StoryState(story_id), chunk)
                    self._states[story_id] = state
                    await self._graph.apply({story_id: chunk}, {story_id: state})
                    applied += len(chunk)
        self.done_events += applied
        metrics().rebuild_events.inc(self.metrics_label, amount=applied)
        return applied

    async def replay_stories(self, story_ids: Sequence[str], end_sequence: int) -> int:
        """Some stories only: read each from the log (up to the end) and apply in chunks."""
        for story_id in story_ids:
            envelopes: list[EventEnvelope] = [
                stored.envelope async for stored in self.store.read(story_id) if stored.sequence <= end_sequence
            ]
            for start in range(0, len(envelopes), self.policy.batch_size):
                chunk = envelopes[start : start + self.policy.batch_size]
                state = fold(self._states.get(story_id) or StoryState(story_id), chunk)
                self._states[story_id] = state
                await self._graph.apply({story_id: chunk}, {story_id: state})
                self.done_events += len(chunk)
                metrics().rebuild_events.inc(self.metrics_label, amount=len(chunk))
        return self.done_events


Progress = Callable[[int, int, float], None]


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def assert_partitions(settings: Settings, workers: int) -> None:
    owned_partitions(workers - 1, workers, settings.partitions)  # raises if workers > partitions
