"""Queries on the read models, with their versions (eventual consistency made visible)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from fleet_actors.domain import rules
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import ProjectionTimeout, StoryNotFound
from fleet_actors.observability.metrics import metrics
from fleet_actors.ports.read_models import ContextDocuments, GraphReadModel


@dataclass(frozen=True)
class ContextView:
    """A story as the read models show it. ``version`` is the context document's version."""

    story_id: str
    version: int
    #: None when only the context document was read (get_context)
    graph_version: int | None
    state: StoryState

    @property
    def consistent_version(self) -> int:
        """Every read model that was read includes every event up to here."""
        return self.version if self.graph_version is None else min(self.version, self.graph_version)


class ReadModels:
    """Queries over the context documents and the graph (opened by ``composition.open_read_models``)."""

    def __init__(self, cache: ContextDocuments, graph: GraphReadModel) -> None:
        self.cache = cache
        self.graph = graph

    async def close(self) -> None:
        await self.cache.close()
        await self.graph.close()

    async def get_context(self, story_id: str) -> ContextView:
        """The context document (Valkey only: a query must not depend on the graph being up)."""
        rules.check_id(story_id, "story_id")
        document = await self.cache.get(story_id)
        if document is None:
            raise StoryNotFound(story_id)
        return ContextView(story_id, document.version, None, document.state)

    async def _both(self, story_id: str) -> ContextView | None:
        document, versions = await asyncio.gather(self.cache.get(story_id), self.graph.applied_versions([story_id]))
        if document is None:
            return None
        return ContextView(story_id, document.version, versions.get(story_id, 0), document.state)

    async def wait_for_projection(self, story_id: str, version: int, timeout: float = 10.0) -> ContextView:
        """Return once both read models include ``version`` (read-your-writes after a command)."""
        rules.check_id(story_id, "story_id")
        started = time.monotonic()
        deadline = started + timeout
        delay = 0.01
        while True:
            view = await self._both(story_id)
            if view is not None and view.consistent_version >= version:
                metrics().fresh_read_waits.observe(time.monotonic() - started, "ok")
                return view
            if time.monotonic() >= deadline:
                metrics().fresh_read_waits.observe(time.monotonic() - started, "timeout")
                seen = f"context v{view.version}, graph v{view.graph_version}" if view else "nothing yet"
                raise ProjectionTimeout(f"story {story_id!r} not projected to version {version} in {timeout}s ({seen})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def fresh_context(
        self, story_id: str, head: Awaitable[int], timeout: float
    ) -> tuple[ContextView | None, int]:
        """The context document once it reflects the story's head (every write acknowledged before the
        call), waiting at most ``timeout`` seconds; past it, what is there. Returns the view (None if
        the story has no document yet) and the head it had to reach.

        The head is read while the document is: a read model that is already caught up costs no more
        than the slower of the two reads.
        """
        rules.check_id(story_id, "story_id")
        document, target = await asyncio.gather(self.cache.get(story_id), head)
        started = time.monotonic()
        deadline = started + timeout
        delay = 0.005
        waited = document is None or document.version < target
        while (document is None or document.version < target) and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
            document = await self.cache.get(story_id)
        if waited:  # a read that had to wait for the projectors (caught-up reads are not counted)
            caught_up = document is not None and document.version >= target
            metrics().fresh_read_waits.observe(time.monotonic() - started, "ok" if caught_up else "timeout")
        view = None if document is None else ContextView(story_id, document.version, None, document.state)
        return view, target
