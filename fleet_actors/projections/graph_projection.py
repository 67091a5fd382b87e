"""The decision graph as a projection on the public API (``projections/api.py``), written into a
database of its own: version n of the graph built from the whole history beside the live one (which
the built-in projectors keep writing), for graph blue/green (docs/projections.md). The database is
created by ``composition.open_graph_projection`` where the server has more than one
(``adapters/neo4j/graph_databases.py``).

Exactly once: the version guard is the graph's own (``applied_versions`` reads the Story nodes'
versions, and ``GraphReadModel.apply`` checks them again in the write transaction). The story states
that set each Story node's summary are folded here and kept for the next batch; a story not in
that cache (after a restart) is folded once from the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import ProjectionGap
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.read_models import GraphReadModel, expected_graph
from fleet_actors.projections.verify import actual_graph, graph_differences

#: story states kept between batches (the cache is emptied when it grows past this)
STATE_CACHE = 20_000
#: reads of a story's subgraph in ``verify`` before comparing one that moved while it was read
VERIFY_ATTEMPTS = 5


class GraphProjection:
    name = "graph"

    def __init__(self, graph: GraphReadModel, store: EventStore, version: int = 2) -> None:
        """``graph``: a graph read model on this version's database; ``store``: the log, to fold a
        story whose state is not cached."""
        self.version = version
        self.graph = graph
        self.store = store
        self._states: dict[str, StoryState] = {}

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return await self.graph.applied_versions(story_ids)

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        states = {}
        for story_id, events in batch.items():
            before = events[0].version - 1
            state = self._states.get(story_id)
            if state is None or state.version != before:
                state = await self._state_at(story_id, before)
            states[story_id] = fold(state, events)
        result = await self.graph.apply(batch, states)
        if len(self._states) > STATE_CACHE:
            self._states.clear()
        for story_id, state in states.items():
            if story_id not in result.gaps:
                self._states[story_id] = state
        if result.gaps:
            self._states.clear()
            raise ProjectionGap(f"graph v{self.version}: events do not follow the graph's versions {result.gaps}")

    async def _state_at(self, story_id: str, version: int) -> StoryState:
        if version <= 0:
            return StoryState(story_id)
        events = [stored.envelope async for stored in self.store.read(story_id)]
        return fold(StoryState(story_id), [e for e in events if e.version <= version])

    async def verify(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        """The story's subgraph against a replay of its events up to the graph's version of it: a
        story behind the log is lag, not a difference; one ahead of it is."""
        for _ in range(VERIFY_ATTEMPTS):  # the parts are read one query each: not while the story moves
            version = (await self.graph.applied_versions([story_id])).get(story_id, 0)
            have = await actual_graph(self.graph, story_id)
            if (await self.graph.applied_versions([story_id])).get(story_id, 0) == version:
                break
        if version > (events[-1].version if events else 0):
            return [f"{story_id}: graph v{self.version} at version {version} is ahead of the log"]
        expected = fold(StoryState(story_id), [e for e in events if e.version <= version])
        return [f"{story_id}: {d}" for d in graph_differences(expected_graph(expected), have)]

    async def close(self) -> None:
        await self.graph.close()
        await self.store.close()
