"""One event store over the archive and the stream: full history past the retention horizon.

The archiver deletes a story's aged events from the stream (always keeping the story's head, so
the per-story concurrency check at append still sees the right last sequence) only after they
are archived, and before deleting it records the highest sequence it may delete in the stream's
metadata (``PURGE_KEY``). A read therefore needs the archive only when that watermark lies after
the caller's position; it takes the story's archived events below the first event still in the
stream, then the stream from there on: no gap, no overlap, and no archive access at all for the
usual "snapshot + later events" activation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import nats.js.errors
from nats.aio.client import Client

from fleet_actors.adapters.archive.segments import Archive, Manifest
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.connection import nats_errors
from fleet_actors.codec import decode_event, decode_events
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import ArchiveCorrupted
from fleet_actors.ports.event_store import ENVELOPE_BATCH, AppendResult, EventStore, StoredEvent
from fleet_actors.settings import Settings

#: stream metadata key: events at or below this sequence may have been deleted (all are archived)
PURGE_KEY = "fleet_archive_purge_through"


async def purge_watermark(nc: Client, settings: Settings) -> int:
    """The highest sequence the archiver may have deleted from the stream (0: none)."""
    with nats_errors(f"reading the purge watermark of {settings.stream_name}"):
        try:
            info = await nc.jsm(timeout=settings.nats_timeout).stream_info(settings.stream_name)
        except nats.js.errors.NotFoundError:
            return 0
    return int((info.config.metadata or {}).get(PURGE_KEY, "0"))


class ArchivedEventStore(EventStore):
    """The EventStore port over archive + stream; writes and heads go to the stream."""

    def __init__(self, stream: JetStreamEventStore, archive: Archive, settings: Settings) -> None:
        self.stream = stream
        self.archive = archive
        self._settings = settings
        self._manifest: Manifest | None = None
        self._refresh = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: Settings) -> ArchivedEventStore:
        return cls(
            await JetStreamEventStore.connect(settings), Archive(settings.archive_url, settings.stream_name), settings
        )

    async def close(self) -> None:
        await self.stream.close()

    async def append(self, story_id: str, expected_sequence: int, events: Sequence[EventEnvelope]) -> AppendResult:
        return await self.stream.append(story_id, expected_sequence, events)

    async def last_sequence(self, story_id: str) -> int:
        # The archiver never deletes a story's head, so the stream alone knows it.
        return await self.stream.last_sequence(story_id)

    async def read(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[StoredEvent]:
        async for sequence, data in self.read_raw(story_id, after_sequence):
            yield StoredEvent(decode_event(data), sequence)

    async def head_version(self, story_id: str) -> int:
        return await self.stream.head_version(story_id)  # the archiver always keeps a story's head

    async def story_ids(self) -> list[str]:
        """The stream's stories and those whose creation is past the retention horizon (archive only)."""
        stories = set(await self.stream.story_ids())
        manifest = await self.archive.manifest()
        stories.update(story for segment in manifest.segments for story in segment.stories)
        return sorted(stories)

    async def read_raw(self, story_id: str, after_sequence: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        """Undecoded events: archived ones below the stream's first event of the story, then the stream's."""
        live = self.stream.read_raw(story_id, after_sequence)
        try:
            first = await anext(live, None)
            for item in await self._archived(story_id, after_sequence, first[0] if first is not None else 0):
                yield item
            if first is not None:
                yield first
                async for item in live:
                    yield item
        finally:
            await live.aclose()

    async def read_envelopes(
        self, story_id: str, after_sequence: int = 0, *, wanted: int | None = None
    ) -> AsyncGenerator[list[EventEnvelope], None]:
        """The archived events below the stream's first one of the story, then the stream's fast read."""
        first_live = await self.stream.first_sequence(story_id, after_sequence)
        archived = await self._archived(story_id, after_sequence, first_live)
        for start in range(0, len(archived), ENVELOPE_BATCH):
            yield decode_events(data for _, data in archived[start : start + ENVELOPE_BATCH])
        # The stream holds nothing of the story between after_sequence and first_live any more.
        async with contextlib.aclosing(self.stream.read_envelopes(story_id, after_sequence, wanted=wanted)) as batches:
            async for batch in batches:
                yield batch

    async def _archived(self, story_id: str, after_sequence: int, first_live: int) -> list[tuple[int, bytes]]:
        """The story's archived events after ``after_sequence`` and below ``first_live``, the sequence of
        its first event still in the stream (0: none). No archive access unless the stream's purge
        watermark says events after ``after_sequence`` may have been deleted."""
        first = first_live or math.inf
        if first <= after_sequence + 1:
            return []
        purged = await purge_watermark(self.stream.connection, self._settings)
        if purged <= after_sequence:
            return []
        before = min(first, purged + 1)
        manifest = await self._manifest_covering(int(before) - 1)
        return list(await self.archive.story_rows(manifest, story_id, after_sequence, int(before)))

    async def _manifest_covering(self, sequence: int) -> Manifest:
        """A manifest that covers ``sequence``: the cached one, else a fresh read (it only grows)."""
        if self._manifest is None or self._manifest.last_sequence < sequence:
            async with self._refresh:
                if self._manifest is None or self._manifest.last_sequence < sequence:
                    self._manifest = await self.archive.manifest()
        if self._manifest.last_sequence < sequence:
            raise ArchiveCorrupted(
                f"the stream has deleted events up to sequence {sequence} but archive {self.archive.display_url} "
                f"only covers {self._manifest.last_sequence}"
            )
        return self._manifest
