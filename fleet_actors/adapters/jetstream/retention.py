"""What the archiver needs of the stream: its bounds, its events by sequence range, deleting a
story's archived events, and the purge watermark readers consult (``PURGE_KEY`` in the metadata)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from nats.aio.client import Client

from fleet_actors.adapters.archive.archived_event_store import PURGE_KEY
from fleet_actors.adapters.archive.segments import RawEvent
from fleet_actors.adapters.jetstream.connection import nats_errors
from fleet_actors.adapters.jetstream.direct_get import read_by_subject
from fleet_actors.settings import Settings


def _parse_stamp(value: str) -> datetime:
    # JetStream stamps carry nanoseconds ("...T03:18:00.123456789Z"); datetime takes microseconds.
    value = value.replace("Z", "+00:00")
    if "." in value:
        head, rest = value.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        value = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    return datetime.fromisoformat(value).astimezone(UTC)


class StreamRetention:
    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings

    async def bounds(self) -> tuple[int, int]:
        """The stream's first and last sequence."""
        with nats_errors(f"reading the state of stream {self._settings.stream_name}"):
            info = await self._nc.jsm(timeout=self._settings.nats_timeout).stream_info(self._settings.stream_name)
        return info.state.first_seq, info.state.last_seq

    async def read_range(self, first: int, last: int) -> AsyncIterator[RawEvent]:
        """Every stored event with ``first <= sequence <= last``, in order."""
        settings = self._settings
        messages = read_by_subject(
            self._nc, settings.stream_name, f"{settings.subject_prefix}.>", first, last,
            timeout=settings.nats_timeout, what=f"reading stream {settings.stream_name} for the archive",
        )  # fmt: skip
        async for msg in messages:
            headers = msg.headers or {}
            yield RawEvent(
                int(headers["Nats-Sequence"]),
                headers["Nats-Subject"],
                _parse_stamp(headers["Nats-Time-Stamp"]),
                msg.data,
            )

    async def delete_story_below(self, story_id: str, keep_from: int) -> None:
        """Delete the story's events with a sequence below ``keep_from``."""
        jsm = self._nc.jsm(timeout=self._settings.nats_timeout)
        with nats_errors(f"deleting archived events of story {story_id}"):
            await jsm.purge_stream(
                self._settings.stream_name, seq=keep_from, subject=self._settings.story_filter(story_id)
            )

    async def publish_watermark(self, cut: int) -> None:
        """Readers of the composite store learn from the stream's metadata how far deletion may have gone."""
        jsm = self._nc.jsm(timeout=self._settings.nats_timeout)
        with nats_errors("recording the archive's purge watermark"):
            info = await jsm.stream_info(self._settings.stream_name)
            config = info.config
            if int((config.metadata or {}).get(PURGE_KEY, "0")) >= cut:
                return
            config.metadata = {**(config.metadata or {}), PURGE_KEY: str(cut)}
            await jsm.update_stream(config)

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.close()
