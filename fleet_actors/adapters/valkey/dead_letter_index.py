"""Which stories are held for a parked event, and the releases operators asked for (Valkey hashes)."""

from __future__ import annotations

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import connect_valkey, valkey_errors
from fleet_actors.adapters.valkey.keys import LEGACY_HELD_KEY, held_key, release_key
from fleet_actors.ports.read_models import DeadLetterIndex, ParkedEvent
from fleet_actors.settings import Settings


class ValkeyDeadLetterIndex(DeadLetterIndex):
    """Keys per stream, so that projectors of two streams sharing a Valkey never release each other's
    stories; the built-in projectors' stories held under the older key (``dlq:held``) are still read.
    ``projection``: a user projection's own index (its held stories do not hold the built-in ones')."""

    def __init__(
        self, client: valkey_async.Valkey, settings: Settings, *, owns_client: bool = False, projection: str = ""
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._held = held_key(settings.stream_name, projection)
        self._release = release_key(settings.stream_name, projection)
        self._legacy = "" if projection else LEGACY_HELD_KEY
        self._subject_prefix = f"{settings.subject_prefix}."

    @classmethod
    async def connect(cls, settings: Settings, projection: str = "") -> ValkeyDeadLetterIndex:
        return cls(await connect_valkey(settings), settings, owns_client=True, projection=projection)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def hold(self, parked: ParkedEvent) -> None:
        with valkey_errors("holding a parked event's story"):
            await self._client.hset(self._held, parked.story_id, parked.to_json())  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T

    async def held(self) -> dict[str, ParkedEvent]:
        with valkey_errors("reading the stories held for parked events"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._legacy or self._held)
                pipe.hgetall(self._held)
                legacy, raw = await pipe.execute()
        held = {k.decode(): ParkedEvent.from_json(v) for k, v in legacy.items()}
        held = {k: p for k, p in held.items() if p.subject.startswith(self._subject_prefix)}
        held.update({k.decode(): ParkedEvent.from_json(v) for k, v in raw.items()})
        return held

    async def request_release(self, story_id: str, action: str) -> None:
        with valkey_errors("requesting a release"):
            await self._client.hset(self._release, story_id, action)  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T

    async def pending_releases(self) -> dict[str, str]:
        with valkey_errors("reading release requests"):
            raw = await self._client.hgetall(self._release)  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def drop_release(self, story_id: str) -> None:
        with valkey_errors("dropping a release request"):
            await self._client.hdel(self._release, story_id)  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T

    async def released(self, story_id: str) -> None:
        with valkey_errors("releasing a held story"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._held, story_id)
                if self._legacy:
                    pipe.hdel(self._legacy, story_id)
                pipe.hdel(self._release, story_id)
                await pipe.execute()
