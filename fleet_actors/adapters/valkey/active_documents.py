"""The context documents as readers see them: the version an operator switched to
(``projections switch-documents``), the live documents (version 1) until then."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import valkey.asyncio as valkey_async

from fleet_actors.adapters.valkey.active_version import ACTIVE_TTL, ActiveVersion
from fleet_actors.adapters.valkey.context_cache import ContextCache, connect_valkey, valkey_errors
from fleet_actors.domain.state import StoryState
from fleet_actors.ports.read_models import ContextDocument, ContextDocuments
from fleet_actors.settings import Settings

DOCUMENTS = "context-documents"


def space_of(version: int) -> str:
    """Version 1 is the live documents' key space (``context:{story}``); version n, ``context:v{n}:{story}``."""
    return "" if version <= 1 else f"v{version}"


class ActiveDocuments(ContextDocuments):
    def __init__(self, client: valkey_async.Valkey, stream: str, *, ttl: float = ACTIVE_TTL) -> None:
        self._client = client
        self.pointer = ActiveVersion(client, stream, DOCUMENTS, ttl=ttl)
        self._spaces: dict[str, ContextCache] = {}

    @classmethod
    async def connect(cls, settings: Settings) -> ActiveDocuments:
        return cls(await connect_valkey(settings), settings.stream_name)

    async def active_version(self) -> int:
        return await self.pointer.get()

    async def switch(self, version: int) -> None:
        """Readers of every process read version ``version`` within ``ttl`` seconds (1: the live documents)."""
        await self.pointer.switch(version)

    async def _cache(self) -> ContextCache:
        space = space_of(await self.pointer.current())
        if space not in self._spaces:
            self._spaces[space] = ContextCache(self._client, space=space)
        return self._spaces[space]

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
