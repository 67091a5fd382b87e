"""A live view of one story's events: an ordered consumer from the start or from now on."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from fleet_actors.adapters.jetstream.connection import nats_errors
from fleet_actors.settings import Settings


class StoryWatch:
    def __init__(self, subscription: Any) -> None:
        self._subscription = subscription

    @classmethod
    async def open(cls, nc: Client, settings: Settings, story_id: str, *, from_start: bool) -> StoryWatch:
        """Subscribed once this returns: every event appended from here on (or from the start) arrives."""
        with nats_errors(f"subscribing to story {story_id}"):
            subscription = await nc.jetstream().subscribe(
                settings.story_filter(story_id),
                stream=settings.stream_name,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
            )
        return cls(subscription)

    async def next(self, closing: asyncio.Event) -> bytes | None:
        """The next stored event's bytes, or None once ``closing`` is set."""
        if closing.is_set():
            return None
        receive = asyncio.ensure_future(self._subscription.next_msg(timeout=None))
        closed = asyncio.ensure_future(closing.wait())
        try:
            await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receive, closed):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return receive.result().data if receive.done() and not receive.cancelled() else None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._subscription.unsubscribe()
