"""The context documents as readers see them: the version an operator switched to
(``projections switch-documents``), the live documents (version 1) until then."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.context_cache import ContextCache, connect_valkey, valkey_errors
from fleet_actors.adapters.valkey.keys import active_documents_key
from fleet_actors.domain.state import StoryState
from fleet_actors.ports.read_models import ContextDocument, ContextDocuments
from fleet_actors.settings import Settings

#: seconds a reader keeps the active version before looking again (the switch's delay for readers)
ACTIVE_TTL = 0.5


def space_of(version: int) -> str:
    """Version 1 is the live documents' key space (``context:{story}``); version n, ``context:v{n}:{story}``."""
    return "" if version <= 1 else f"v{version}"


class ActiveDocuments(ContextDocuments):
    def __init__(self, client: valkey_async.Valkey, stream: str, *, ttl: float = ACTIVE_TTL) -> None:
        self._client = client
        self._key = active_documents_key(stream)
        self._ttl = ttl
        self._spaces: dict[str, ContextCache] = {}
        self._active = ""
        self._checked = -1e9

    @classmethod
    async def connect(cls, settings: Settings) -> ActiveDocuments:
        return cls(await connect_valkey(settings), settings.stream_name)

    async def active_version(self) -> int:
        with valkey_errors("reading the active documents version"):
            raw = await self._client.get(self._key)
        return int(raw) if raw else 1

    async def switch(self, version: int) -> None:
        """Readers of every process read version ``version`` within ``ttl`` seconds (1: the live documents)."""
        with valkey_errors("switching the active documents version"):
            if version <= 1:
                await self._client.delete(self._key)
            else:
                await self._client.set(self._key, str(version))
        self._checked = -1e9

    async def _cache(self) -> ContextCache:
        if time.monotonic() - self._checked >= self._ttl:
            self._active = space_of(await self.active_version())
            self._checked = time.monotonic()
        if self._active not in self._spaces:
            self._spaces[self._active] = ContextCache(self._client, space=self._active)
        return self._spaces[self._active]

    async def get_many(self, story_ids: Sequence[str]) -> dict[str, ContextDocument | None]:
        return await (await self._cache()).get_many(story_ids)

    async def versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return await (await self._cache()).versions(story_ids)

    async def commit(
        self,
        states: Iterable[StoryState],
        processed_event_ids: Iterable[str] = (),
        offsets: Mapping[str, int] | None = None,
    ) -> None:
        await (await self._cache()).commit(states, processed_event_ids, offsets)

    async def already_processed(self, event_ids: Sequence[str]) -> set[str]:
        return await (await self._cache()).already_processed(event_ids)

    async def offset(self, consumer: str) -> int | None:
        return await (await self._cache()).offset(consumer)

    async def ping(self) -> None:
        with valkey_errors("pinging Valkey"):
            await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()
