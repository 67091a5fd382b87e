"""A user projection's checkpoint, registration and progress (Valkey hashes; keys in ``keys.py``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import connect_valkey, valkey_errors
from fleet_actors.adapters.valkey.keys import (
    projection_progress_key,
    projection_versions_key,
    registered_projections_key,
)
from fleet_actors.ports.checkpoints import ProjectionCheckpoints
from fleet_actors.settings import Settings

#: each story's version only moves forward (ARGV: story, version, story, version, ...)
_ADVANCE = """
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


class ValkeyProjectionCheckpoints(ProjectionCheckpoints):
    def __init__(self, client: valkey_async.Valkey, stream: str, *, owns_client: bool = False) -> None:
        self._client = client
        self._stream = stream
        self._owns_client = owns_client
        self._advance = client.register_script(_ADVANCE)

    @classmethod
    async def connect(cls, settings: Settings) -> ValkeyProjectionCheckpoints:
        return cls(await connect_valkey(settings), settings.stream_name, owns_client=True)

    async def versions(self, projection: str, story_ids: Sequence[str]) -> dict[str, int]:
        if not story_ids:
            return {}
        with valkey_errors("reading a projection's checkpoint"):
            raw = await self._client.hmget(projection_versions_key(self._stream, projection), list(story_ids))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
        return {story_id: int(value) if value else 0 for story_id, value in zip(story_ids, raw, strict=True)}

    async def advance(self, projection: str, versions: Mapping[str, int]) -> None:
        if not versions:
            return
        args: list[str] = []
        for story_id, version in versions.items():
            args += [story_id, str(version)]
        with valkey_errors("advancing a projection's checkpoint"):
            await self._advance(keys=[projection_versions_key(self._stream, projection)], args=args)

    async def register(self, projection: str, record: Mapping[str, Any]) -> None:
        with valkey_errors("registering a projection"):
            await self._client.hset(registered_projections_key(self._stream), projection, json.dumps(dict(record)))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T

    async def registered(self) -> dict[str, dict[str, Any]]:
        with valkey_errors("listing the registered projections"):
            raw = await self._client.hgetall(registered_projections_key(self._stream))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
        return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}

    async def publish_progress(self, projection: str, worker: str, progress: Mapping[str, Any]) -> None:
        with valkey_errors("publishing a projection's progress"):
            key = projection_progress_key(self._stream, projection)
            await self._client.hset(key, worker, json.dumps(dict(progress)))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T

    async def progress(self, projection: str) -> dict[str, dict[str, Any]]:
        with valkey_errors("reading a projection's progress"):
            raw = await self._client.hgetall(projection_progress_key(self._stream, projection))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
        return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}

    async def remove(self, projection: str) -> None:
        with valkey_errors("removing a projection"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(registered_projections_key(self._stream), projection)
                pipe.delete(projection_versions_key(self._stream, projection))
                pipe.delete(projection_progress_key(self._stream, projection))
                await pipe.execute()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
