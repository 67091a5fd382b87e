"""Replay the event log and compare with both read models; every difference is reported."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.read_models import ContextDocument, ContextDocuments, GraphReadModel


def expected_graph(state: StoryState) -> dict[str, Any]:
    """What the graph must hold for a story in this state (multisets: duplicates count)."""
    return {
        "story": Counter([(state.title, state.phase, state.status, state.version)] if state.created else []),
        "subtasks": Counter((s.subtask_id, s.status) for s in state.subtasks.values()),
        "subtask_dependencies": Counter((s.subtask_id, d) for s in state.subtasks.values() for d in s.dependencies),
        "decisions": Counter((d.decision_id, d.status) for d in state.decisions.values()),
        "decision_relations": Counter((r.src_id, r.relation_type, r.dst_id) for r in state.relations),
        "impacts": Counter((i.decision_id, i.subtask_id) for i in state.impacts),
        "milestones": Counter((m.milestone_id,) for m in state.milestones),
        "transitions": Counter((p.from_phase, p.to_phase) for p in state.phase_history),
    }


async def actual_graph(graph: GraphReadModel, story_id: str) -> dict[str, Any]:
    rows_by_part = await graph.story_rows(story_id)
    return {part: Counter(tuple(row.values()) for row in rows) for part, rows in rows_by_part.items()}


@dataclass
class StoryReport:
    story_id: str
    version: int
    differences: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    stories: list[StoryReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(not s.differences for s in self.stories)

    @property
    def differences(self) -> list[str]:
        return [f"{s.story_id}: {d}" for s in self.stories for d in s.differences]


async def verify_story(
    store: EventStore, cache: ContextDocuments | None, graph: GraphReadModel, story_id: str
) -> StoryReport:
    """Differences between the log and the read models for one story (no cache: the graph only)."""
    expected = fold(StoryState(story_id), [s.envelope for s in await store.read_all(story_id)])
    report = StoryReport(story_id, expected.version)
    if cache is not None:
        report.differences.extend(_document_differences(await cache.get(story_id), expected))
    want, have = expected_graph(expected), await actual_graph(graph, story_id)
    for name in want:
        missing, extra = want[name] - have[name], have[name] - want[name]
        if missing or extra:
            report.differences.append(
                f"graph {name}: missing {sorted(missing.elements())} extra {sorted(extra.elements())}"
            )
    return report


def _document_differences(document: ContextDocument | None, expected: StoryState) -> list[str]:
    if document is None:
        return [f"context document missing (log at v{expected.version})"] if expected.version else []
    if document.state == expected:
        return []
    fields = [
        name for name in expected.__dataclass_fields__ if getattr(document.state, name) != getattr(expected, name)
    ]
    return [f"context document v{document.version} differs from the log v{expected.version} in: {', '.join(fields)}"]


async def verify_all(
    store: EventStore,
    documents: ContextDocuments | None,
    graph: GraphReadModel,
    story_ids: list[str] | None = None,
) -> VerifyReport:
    """Compare the graph (and the context documents, if given) with the log, for these stories or all."""
    ids = story_ids if story_ids is not None else await store.story_ids()
    report = VerifyReport()
    for story_id in ids:
        report.stories.append(await verify_story(store, documents, graph, story_id))
    return report
