"""Replay the event log and compare with both read models; every difference is reported."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import EventDecodeError
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.read_models import ContextDocument, ContextDocuments, GraphReadModel, expected_graph


async def actual_graph(graph: GraphReadModel, story_id: str) -> dict[str, Any]:
    rows_by_part = await graph.story_rows(story_id)
    return {part: Counter(tuple(row.values()) for row in rows) for part, rows in rows_by_part.items()}


@dataclass
class StoryReport:
    story_id: str
    version: int
    differences: list[str] = field(default_factory=list)
    #: the story's nodes and relationships in the graph, as the log makes them (for the census)
    nodes: int = 0
    edges: int = 0


@dataclass
class VerifyReport:
    stories: list[StoryReport] = field(default_factory=list)
    #: whole-graph differences (counts, orphans), with a census
    graph: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.graph and all(not s.differences for s in self.stories)

    @property
    def differences(self) -> list[str]:
        return [f"{s.story_id}: {d}" for s in self.stories for d in s.differences] + [f"graph: {d}" for d in self.graph]


async def verify_story(
    store: EventStore, cache: ContextDocuments | None, graph: GraphReadModel, story_id: str, *, named: bool = False
) -> StoryReport:
    """Differences between the log and the read models for one story (no cache: the graph only).

    An event that cannot be decoded is a difference of its story (the others are still checked);
    a story the log lacks is one when it was ``named`` by the caller."""
    try:
        envelopes = [s.envelope for s in await store.read_all(story_id)]
    except EventDecodeError as error:
        return StoryReport(story_id, 0, [f"undecodable event in the log: {error.message}"])
    if not envelopes and named:
        return StoryReport(story_id, 0, ["not in the event log"])
    expected = fold(StoryState(story_id), envelopes)
    report = StoryReport(story_id, expected.version)
    wanted = expected_graph(expected)
    own_nodes = sum(wanted[p].total() for p in ("subtasks", "decisions", "milestones", "transitions"))
    links = sum(wanted[p].total() for p in ("subtask_dependencies", "decision_relations", "impacts"))
    report.nodes, report.edges = own_nodes, own_nodes + links
    if cache is not None:
        report.differences.extend(document_differences(await cache.get(story_id), expected))
    report.differences.extend(graph_differences(wanted, await actual_graph(graph, story_id)))
    return report


def graph_differences(want: dict[str, Counter[tuple[Any, ...]]], have: dict[str, Any]) -> list[str]:
    """What a story's graph (``actual_graph``) lacks or has too many of against ``expected_graph``."""
    out = []
    for name in want:
        missing, extra = want[name] - have[name], have[name] - want[name]
        if missing or extra:
            lacking, surplus = sorted(missing.elements(), key=repr), sorted(extra.elements(), key=repr)
            out.append(f"graph {name}: missing {lacking} extra {surplus}")
    return out


def document_differences(document: ContextDocument | None, expected: StoryState) -> list[str]:
    if document is None:
        return [f"context document missing (log at v{expected.version})"] if expected.version else []
    if document.state == expected:
        return []
    fields = [
        name for name in expected.__dataclass_fields__ if getattr(document.state, name) != getattr(expected, name)
    ]
    return [f"context document v{document.version} differs from the log v{expected.version} in: {', '.join(fields)}"]


Progress = Callable[[int, int, float], None]


async def verify_all(
    store: EventStore,
    documents: ContextDocuments | None,
    graph: GraphReadModel,
    story_ids: list[str] | None = None,
    *,
    census: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare the graph (and the context documents, if given) with the log, for these stories or all.

    With ``census`` (a whole-graph check of a graph that holds this log only), the graph's total
    Story nodes, story nodes and relationships are compared with the log's, and orphans reported."""
    named = story_ids is not None
    ids = story_ids if story_ids is not None else await store.story_ids()
    report = VerifyReport()
    started = last = time.monotonic()
    for number, story_id in enumerate(ids, start=1):
        report.stories.append(await verify_story(store, documents, graph, story_id, named=named))
        if progress and (time.monotonic() - last >= 1.0 or number == len(ids)):
            last = time.monotonic()
            progress(number, len(ids), last - started)
    if census:
        report.graph = await _census_differences(graph, report)
    return report


async def _census_differences(graph: GraphReadModel, report: VerifyReport) -> list[str]:
    found = await graph.census()
    states = [s for s in report.stories if s.version]
    want_stories = len(states)
    want_nodes = sum(s.nodes for s in states)
    want_edges = sum(s.edges for s in states)
    out = []
    if found.orphan_count:
        out.append(f"{found.orphan_count} orphan nodes no Story points at: {', '.join(found.orphans)}")
    if found.stories != want_stories:
        out.append(f"the graph has {found.stories} Story nodes, the log {want_stories} stories")
    if found.nodes != want_nodes:
        out.append(f"the graph has {found.nodes} story nodes (subtasks, decisions, transitions, milestones), "
                   f"the log makes {want_nodes}")  # fmt: skip
    if found.edges != want_edges:
        out.append(f"the graph has {found.edges} relationships, the log makes {want_edges}")
    return out
