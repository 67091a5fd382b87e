"""The graph as readers see it (graph blue/green, docs/projections.md): the version an operator
switched to (``projections switch graph N``), each version a database of its own; the live graph
(version 1) until then. Wired by ``composition.open_read_models``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.ports.read_models import GraphApplyResult, GraphCensus, GraphReadModel, SnapshotLink


class VersionPointer(Protocol):
    """Which version readers read (``adapters/valkey/active_version.ActiveVersion``)."""

    async def current(self) -> int: ...


class ActiveGraph(GraphReadModel):
    def __init__(
        self,
        pointer: VersionPointer,
        open_version: Callable[[int], Awaitable[GraphReadModel]],
        close_pointer: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``open_version(n)``: a graph read model on version n's database (opened on first use, kept)."""
        self._pointer = pointer
        self._open_version = open_version
        self._close_pointer = close_pointer
        self._graphs: dict[int, GraphReadModel] = {}
        self._active = 0
        self._opening = asyncio.Lock()

    async def graph(self) -> GraphReadModel:
        """The active version's graph. Versions that are no longer read are closed (a switched-from
        or dropped version's driver would otherwise stay open for the reader's lifetime): all but
        the active one and the one before it, which reads begun before the switch may still use."""
        version = await self._pointer.current()
        graph = self._graphs.get(version)
        if graph is None or version != self._active:
            async with self._opening:
                if version not in self._graphs:
                    self._graphs[version] = await self._open_version(version)
                graph = self._graphs[version]
                if version != self._active:
                    stale = [v for v in self._graphs if v not in (version, self._active)]
                    self._active = version
                    for old in stale:
                        with contextlib.suppress(Exception):  # a read must not fail on a driver it no longer uses
                            await self._graphs.pop(old).close()
        return graph

    async def apply(
        self, events: Mapping[str, Sequence[EventEnvelope]], states: Mapping[str, StoryState]
    ) -> GraphApplyResult:
        return await (await self.graph()).apply(events, states)

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return await (await self.graph()).applied_versions(story_ids)

    async def link_snapshots(self, links: Sequence[SnapshotLink]) -> None:
        await (await self.graph()).link_snapshots(links)

    async def wipe_stories(self, story_ids: Sequence[str]) -> None:
        await (await self.graph()).wipe_stories(story_ids)

    async def story_rows(self, story_id: str) -> dict[str, list[dict[str, Any]]]:
        return await (await self.graph()).story_rows(story_id)

    async def census(self, orphan_limit: int = 20) -> GraphCensus:
        return await (await self.graph()).census(orphan_limit)

    async def neighbourhood(
        self, node_type: str, node_id: str, depth: int, limit: int
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        return await (await self.graph()).neighbourhood(node_type, node_id, depth, limit)

    async def qualified_ids(self, node_type: str, plain_id: str, limit: int) -> list[str]:
        return await (await self.graph()).qualified_ids(node_type, plain_id, limit)

    async def ping(self) -> None:
        await (await self.graph()).ping()

    async def close(self) -> None:
        graphs, self._graphs = list(self._graphs.values()), {}
        for graph in graphs:
            await graph.close()
        if self._close_pointer is not None:
            await self._close_pointer()
