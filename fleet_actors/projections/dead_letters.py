"""Poison events: parked in a dead-letter stream; their story waits until an operator decides.

A parked story is held: the projector acknowledges its later events without applying them (they
stay in the event log). ``retry`` or ``skip`` releases it, and its owning projector then reads the
missing events straight from the log, so nothing is applied out of order and nothing is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from fleet_actors.adapters.jetstream.connection import declare_stream, nats_errors, stream_placement
from fleet_actors.adapters.valkey import ContextCache, valkey_errors
from fleet_actors.errors import InvalidCommand
from fleet_actors.settings import Settings

HELD_KEY = "dlq:held"
RELEASE_KEY = "dlq:release"


@dataclass(frozen=True)
class ParkedEvent:
    story_id: str
    version: int
    stream_sequence: int
    subject: str
    consumer: str
    error: str
    deliveries: int
    parked_at: str
    dlq_sequence: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ParkedEvent:
        return cls(**json.loads(raw))


def dlq_stream(settings: Settings) -> str:
    return f"{settings.stream_name}_DLQ"


def dlq_subject(settings: Settings, story_id: str) -> str:
    return f"{settings.subject_prefix}-dlq.{story_id}"


class DeadLetters:
    def __init__(self, nc: Client, cache: ContextCache, settings: Settings) -> None:
        self._js = nc.jetstream()
        self._jsm = nc.jsm()
        self._cache = cache
        self._settings = settings

    async def ensure_stream(self) -> None:
        config = StreamConfig(
            name=dlq_stream(self._settings),
            subjects=[f"{self._settings.subject_prefix}-dlq.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            num_replicas=self._settings.stream_replicas,
            placement=stream_placement(self._settings),
        )
        await declare_stream(self._jsm, config, ("num_replicas", "placement"), "the dead-letter stream")

    async def park(self, event: ParkedEvent, data: bytes) -> ParkedEvent:
        """Store the original bytes with the reason, then hold the story."""
        headers = {
            "Fleet-Error": event.error[:1000],
            "Fleet-Deliveries": str(event.deliveries),
            "Fleet-Original-Sequence": str(event.stream_sequence),
            "Fleet-Original-Subject": event.subject,
            "Nats-Msg-Id": f"dlq-{event.consumer}-{event.stream_sequence}",
        }
        with nats_errors("parking a poison event"):
            ack = await self._js.publish(dlq_subject(self._settings, event.story_id), data, headers=headers)
        parked = ParkedEvent(**{**event.__dict__, "dlq_sequence": ack.seq})
        with valkey_errors("holding a parked event's story"):
            await self._cache.client.hset(HELD_KEY, event.story_id, parked.to_json())
        return parked

    async def held(self) -> dict[str, ParkedEvent]:
        with valkey_errors("reading the stories held for parked events"):
            raw = await self._cache.client.hgetall(HELD_KEY)
        return {k.decode(): ParkedEvent.from_json(v) for k, v in raw.items()}

    async def request_release(self, story_id: str, action: str) -> ParkedEvent:
        """Ask the owning projector to retry the parked event, or to skip it, and catch the story up."""
        if action not in ("retry", "skip"):
            raise InvalidCommand("action must be retry or skip", field="action")
        held = await self.held()
        if story_id not in held:
            raise InvalidCommand(f"story {story_id!r} has no parked event", field="story_id")
        with valkey_errors("requesting a release"):
            await self._cache.client.hset(RELEASE_KEY, story_id, action)
        return held[story_id]

    async def pending_releases(self) -> dict[str, str]:
        with valkey_errors("reading release requests"):
            raw = await self._cache.client.hgetall(RELEASE_KEY)
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def drop_release(self, story_id: str) -> None:
        """The release failed again (the story stays held): forget the request."""
        with valkey_errors("dropping a release request"):
            await self._cache.client.hdel(RELEASE_KEY, story_id)

    async def released(self, story_id: str) -> None:
        with valkey_errors("releasing a held story"):
            async with self._cache.client.pipeline(transaction=True) as pipe:
                pipe.hdel(HELD_KEY, story_id)
                pipe.hdel(RELEASE_KEY, story_id)
                await pipe.execute()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
