"""Which version of a read model readers read (blue/green, docs/projections.md): one Valkey key per
read model, ``projection:{stream}:{read_model}:active`` (absent: version 1), written by ``projections
switch`` and re-read by every reader at most every ``ttl`` seconds; and which version the live
projectors write, ``projection:{stream}:{read_model}:written`` (absent: 1), written by ``projections
promote``."""

from __future__ import annotations

import time

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import valkey_errors
from fleet_actors.adapters.valkey.keys import active_version_key, dropped_versions_key, written_version_key

#: seconds a reader keeps the active version before looking again (the switch's delay for readers)
ACTIVE_TTL = 0.5


class ActiveVersion:
    def __init__(
        self, client: valkey_async.Valkey, stream: str, read_model: str, *, ttl: float = ACTIVE_TTL,
        written: bool = False,
    ) -> None:  # fmt: skip
        """``written``: the version the live projectors write rather than the one readers read."""
        self.client = client
        self.read_model = read_model
        self._key = (written_version_key if written else active_version_key)(stream, read_model)
        self._dropped_key = dropped_versions_key(stream, read_model)
        self._ttl = ttl
        self._version = 1
        self._checked = -1e9

    async def get(self) -> int:
        """The version readers are switched to, read now."""
        with valkey_errors(f"reading the active {self.read_model} version"):
            raw = await self.client.get(self._key)
        return int(raw) if raw else 1

    async def current(self) -> int:
        """The active version as this reader sees it: re-read once ``ttl`` seconds have passed."""
        if time.monotonic() - self._checked >= self._ttl:
            self._version = await self.get()
            self._checked = time.monotonic()
        return self._version

    async def switch(self, version: int) -> None:
        """Readers of every process read version ``version`` within ``ttl`` seconds (1: the live one)."""
        with valkey_errors(f"switching the active {self.read_model} version"):
            if version <= 1:
                await self.client.delete(self._key)
            else:
                await self.client.set(self._key, str(version))
        self._checked = -1e9

    async def dropped(self) -> set[int]:
        """The versions dropped since they were last deployed (``projections drop``): never read again."""
        with valkey_errors(f"reading the dropped {self.read_model} versions"):
            members = await self.client.smembers(self._dropped_key)  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
            return {int(v) for v in members}

    async def mark_dropped(self, version: int, dropped: bool = True) -> None:
        with valkey_errors(f"recording a dropped {self.read_model} version"):
            if dropped:
                await self.client.sadd(self._dropped_key, str(version))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T
            else:
                await self.client.srem(self._dropped_key, str(version))  # type: ignore[misc]  # valkey-py stubs: Awaitable[T] | T


#: the built-in read models' names in their pointers' keys
READ_MODELS = {"graph": "graph", "documents": "context-documents"}


async def read_model_versions(client: valkey_async.Valkey, stream: str, *, written: bool = False) -> dict[str, int]:
    """The version readers read of each built-in read model, ``{"graph": g, "documents": d}`` (with
    ``written``: the version the live projectors write; docs/projections.md, section 8)."""
    return {name: await ActiveVersion(client, stream, key, written=written).get() for name, key in READ_MODELS.items()}


class ReadModelVersions:
    """The versions the live projectors write, on a connection of its own (they look every few seconds)."""

    def __init__(self, client: valkey_async.Valkey, stream: str) -> None:
        self.client = client
        self._stream = stream

    async def get(self) -> dict[str, int]:
        return await read_model_versions(self.client, self._stream, written=True)

    async def close(self) -> None:
        await self.client.aclose()
