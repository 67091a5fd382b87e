"""Which version of a read model readers read (blue/green, docs/projections.md): one Valkey key per
read model, ``projection:{stream}:{read_model}:active`` (absent: version 1, the live one), written by
``projections switch`` and re-read by every reader at most every ``ttl`` seconds."""

from __future__ import annotations

import time

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import valkey_errors
from fleet_actors.adapters.valkey.keys import active_version_key

#: seconds a reader keeps the active version before looking again (the switch's delay for readers)
ACTIVE_TTL = 0.5


class ActiveVersion:
    def __init__(self, client: valkey_async.Valkey, stream: str, read_model: str, *, ttl: float = ACTIVE_TTL) -> None:
        self.client = client
        self.read_model = read_model
        self._key = active_version_key(stream, read_model)
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
