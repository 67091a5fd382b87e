"""The graph as a projection on the public API (version n of graph blue/green), on the in-memory
ports: batch by batch it ends as a replay; a fresh instance (a restarted runner) folds a story it
has not seen from the log; events after a hole are caught up from the log, and a hole the log
cannot fill is a gap, not applied."""

from __future__ import annotations

import dataclasses

import pytest

from fleet_actors.adapters.memory import InMemoryEventStore
from fleet_actors.adapters.memory.read_models import InMemoryGraph
from fleet_actors.domain.events import SubtaskCreated
from fleet_actors.errors import ProjectionGap
from fleet_actors.projections.read_models_projection import GraphProjection
from fleet_actors.projections.runner import verify_projection
from tests.contracts.read_models_contract import new_story_id, story_events


async def _stored(count: int) -> tuple[InMemoryEventStore, str, list]:
    store, story_id = InMemoryEventStore(), new_story_id()
    events = story_events(story_id, count)
    await store.append(story_id, 0, events)
    return store, story_id, events


async def test_batches_and_a_restart_end_as_a_replay() -> None:
    store, story_id, events = await _stored(8)
    graph = InMemoryGraph()
    await GraphProjection(graph, store).apply({story_id: events[:3]})
    assert await verify_projection(GraphProjection(graph, store), store, [story_id]) == {}  # behind: lag only
    restarted = GraphProjection(graph, store)  # no cached state: folds v1..v3 from the log
    await restarted.apply({story_id: events[3:5]})
    await restarted.apply({story_id: events[5:]})
    assert await restarted.applied_versions([story_id]) == {story_id: 8}
    assert await verify_projection(restarted, store, [story_id]) == {}


async def test_events_that_skip_a_version_are_caught_up_from_the_log() -> None:
    store, story_id, events = await _stored(5)
    graph = InMemoryGraph()
    projection = GraphProjection(graph, store)
    await projection.apply({story_id: events[:2]})
    await projection.apply({story_id: events[3:]})  # v4.. after v2: v3 comes from the log
    assert await graph.applied_versions([story_id]) == {story_id: 5}
    assert await verify_projection(projection, store, [story_id]) == {}


async def test_events_the_log_cannot_fill_in_are_a_gap_not_applied() -> None:
    store, story_id, events = await _stored(2)  # the log holds v1 and v2 only
    later = story_events(story_id, 5)[3:]
    graph = InMemoryGraph()
    projection = GraphProjection(graph, store)
    await projection.apply({story_id: events})
    with pytest.raises(ProjectionGap):
        await projection.apply({story_id: later})  # v4.. after v2, and no v3 anywhere
    assert await graph.applied_versions([story_id]) == {story_id: 2}


async def test_verify_finds_a_graph_that_differs_from_the_log() -> None:
    store, story_id, events = await _stored(4)
    graph = InMemoryGraph()
    await GraphProjection(graph, store).apply({story_id: events})
    other = story_events(story_id, 4)[:2]  # the log says otherwise about its first events
    assert (await GraphProjection(graph, store).verify(story_id, other))[0].endswith("ahead of the log")
    retitled = [events[0], dataclasses.replace(events[1], payload=SubtaskCreated("T1", "Other")), *events[2:]]
    differences = await GraphProjection(graph, store).verify(story_id, retitled)
    assert differences and "graph subtasks" in differences[0]
    assert await GraphProjection(graph, store).verify(story_id, events) == []
