"""Queries on the read models, with their versions (eventual consistency made visible)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.valkey import ContextCache
from fleet_actors.domain import rules
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import ProjectionTimeout, StoryNotFound
from fleet_actors.settings import Settings


@dataclass(frozen=True)
class ContextView:
    """A story as the read models show it. ``version`` is the context document's version."""

    story_id: str
    version: int
    graph_version: int
    state: StoryState

    @property
    def consistent_version(self) -> int:
        """Both read models include every event up to here."""
        return min(self.version, self.graph_version)


class ReadModels:
    def __init__(self, cache: ContextCache, graph: GraphStore) -> None:
        self.cache = cache
        self.graph = graph

    @classmethod
    async def connect(cls, settings: Settings) -> ReadModels:
        cache = await ContextCache.connect(settings)
        try:
            graph = await GraphStore.connect(settings)
        except BaseException:
            await cache.close()
            raise
        return cls(cache, graph)

    async def close(self) -> None:
        await self.cache.close()
        await self.graph.close()

    async def get_context(self, story_id: str) -> ContextView:
        rules.check_id(story_id, "story_id")
        document, versions = await asyncio.gather(self.cache.get(story_id), self.graph.applied_versions([story_id]))
        graph_version = versions.get(story_id, 0)
        if document is None:
            if graph_version == 0:
                raise StoryNotFound(story_id)
            return ContextView(story_id, 0, graph_version, StoryState(story_id))
        return ContextView(story_id, document.version, graph_version, document.state)

    async def wait_for_projection(self, story_id: str, version: int, timeout: float = 10.0) -> ContextView:
        """Return once both read models include ``version`` (read-your-writes after a command)."""
        rules.check_id(story_id, "story_id")
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                view = await self.get_context(story_id)
                if view.consistent_version >= version:
                    return view
            except StoryNotFound:
                view = None
            if time.monotonic() >= deadline:
                seen = f"context v{view.version}, graph v{view.graph_version}" if view else "nothing yet"
                raise ProjectionTimeout(f"story {story_id!r} not projected to version {version} in {timeout}s ({seen})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
