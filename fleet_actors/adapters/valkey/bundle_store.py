"""Persisted RehydrateSession responses in Valkey, under ``rehydration:{case_id}`` with a TTL."""

from __future__ import annotations

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import valkey_client, valkey_errors
from fleet_actors.adapters.valkey.keys import bundle_key
from fleet_actors.settings import Settings


class BundleStore:
    def __init__(self, client: valkey_async.Valkey) -> None:
        self._client = client

    @classmethod
    async def connect(cls, settings: Settings) -> BundleStore:
        """A client for the configured Valkey (it connects on first use)."""
        return cls(valkey_client(settings))

    async def put(self, case_id: str, bundle: bytes, ttl_seconds: int) -> str:
        """Store ``bundle`` as the case's latest, expiring after ``ttl_seconds``; returns its key."""
        key = bundle_key(case_id)
        with valkey_errors("persisting a rehydration bundle"):
            await self._client.set(key, bundle, ex=ttl_seconds)
        return key

    async def close(self) -> None:
        """Release the connection pool."""
        await self._client.aclose()
