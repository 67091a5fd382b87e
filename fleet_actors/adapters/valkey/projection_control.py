"""The projectors' control records in Valkey: the rebuild's pause flag and its acknowledgements,
each projector's published status and each rebuild job's progress."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import connect_valkey, valkey_errors
from fleet_actors.adapters.valkey.keys import job_key, pause_key, paused_key, status_key
from fleet_actors.ports.read_models import ProjectionControl
from fleet_actors.settings import Settings


class ValkeyProjectionControl(ProjectionControl):
    def __init__(self, client: valkey_async.Valkey, stream: str, *, owns_client: bool = False) -> None:
        self._client = client
        self._stream = stream
        self._owns_client = owns_client

    @classmethod
    async def connect(cls, settings: Settings) -> ValkeyProjectionControl:
        return cls(await connect_valkey(settings), settings.stream_name, owns_client=True)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def pausing_job(self) -> str | None:
        with valkey_errors("checking for a rebuild"):
            job = await self._client.get(pause_key(self._stream))
        return None if job is None else job.decode()

    async def pause(self, job_id: str) -> None:
        with valkey_errors("pausing the live projectors"):
            await self._client.set(pause_key(self._stream), job_id)

    async def resume(self) -> None:
        with valkey_errors("resuming the live projectors"):
            await self._client.delete(pause_key(self._stream))

    async def acknowledge_pause(self, job_id: str, consumers: Sequence[str], ttl_seconds: int) -> None:
        with valkey_errors("acknowledging a rebuild's pause"):
            async with self._client.pipeline(transaction=False) as pipe:
                for name in consumers:
                    pipe.set(paused_key(self._stream, name), job_id, ex=ttl_seconds)
                await pipe.execute()

    async def paused_for(self, consumer: str) -> str | None:
        with valkey_errors("waiting for the live projectors to pause"):
            job = await self._client.get(paused_key(self._stream, consumer))
        return None if job is None else job.decode()

    async def publish_status(self, projector: str, status: Mapping[str, Any]) -> None:
        with valkey_errors("publishing the projector's status"):
            await self._client.set(status_key(self._stream, projector), json.dumps(dict(status)))

    async def status(self, projector: str) -> dict[str, Any]:
        with valkey_errors("reading a projector's status"):
            raw = await self._client.get(status_key(self._stream, projector))
        return json.loads(raw) if raw else {}

    async def statuses(self) -> dict[str, dict[str, Any]]:
        with valkey_errors("reading the projectors' statuses"):
            keys = [key async for key in self._client.scan_iter(match=status_key(self._stream, "*"), count=200)]
            values = await self._client.mget(keys) if keys else []  # one round trip for all of them
        names = [(key.decode() if isinstance(key, bytes) else key).split(":")[-2] for key in keys]
        return {name: json.loads(raw) for name, raw in zip(names, values, strict=True) if raw}

    async def job_progress(self, job_id: str) -> dict[str, str]:
        with valkey_errors("reading the rebuild's progress"):
            raw = await self._client.hgetall(job_key(self._stream, job_id))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def record_job_progress(self, job_id: str, **fields: str) -> None:
        with valkey_errors("recording the rebuild's progress"):
            await self._client.hset(job_key(self._stream, job_id), mapping=fields)  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T

    async def rebuild_jobs(self) -> dict[str, dict[str, str]]:
        prefix = job_key(self._stream, "")
        with valkey_errors("listing the rebuild jobs"):
            keys = [key async for key in self._client.scan_iter(match=f"{prefix}*", count=500)]
            jobs: dict[str, dict[str, str]] = {}
            for key in keys:
                raw = await self._client.hgetall(key)  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
                jobs[key.decode()[len(prefix) :]] = {k.decode(): v.decode() for k, v in raw.items()}
        return jobs
