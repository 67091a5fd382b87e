"""Replay the event log and compare with both read models; every difference is reported."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

from fleet_actors.adapters.jetstream import JetStreamEventStore, nats_errors
from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.valkey import ContextCache, ContextDocument
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.settings import Settings

_GRAPH_QUERIES = {
    "story": "MATCH (s:Story {story_id: $id}) "
    "RETURN s.title AS title, s.phase AS phase, s.status AS status, s.version AS version",
    "subtasks": "MATCH (:Story {story_id: $id})-[:HAS_SUBTASK]->(t:Subtask) "
    "RETURN t.subtask_id AS id, t.status AS status",
    "subtask_dependencies": "MATCH (:Story {story_id: $id})-[:HAS_SUBTASK]->(t:Subtask)-[:DEPENDS_ON]->(d:Subtask) "
    "RETURN t.subtask_id AS src, d.subtask_id AS dst",
    "decisions": "MATCH (:Story {story_id: $id})-[:HAS_DECISION]->(d:Decision) "
    "RETURN d.decision_id AS id, d.status AS status",
    "decision_relations": "MATCH (:Story {story_id: $id})-[:HAS_DECISION]->(a:Decision)-[r]->(b:Decision) "
    "RETURN a.decision_id AS src, type(r) AS type, b.decision_id AS dst",
    "impacts": "MATCH (:Story {story_id: $id})-[:HAS_DECISION]->(d:Decision)-[:IMPACTS]->(t:Subtask) "
    "RETURN d.decision_id AS decision, t.subtask_id AS subtask",
    "milestones": "MATCH (:Story {story_id: $id})-[:HAS_MILESTONE]->(m:Milestone) RETURN m.milestone_id AS id",
    "transitions": "MATCH (:Story {story_id: $id})-[:HAS_TRANSITION]->(p:PhaseTransition) "
    "RETURN p.from_phase AS src, p.to_phase AS dst",
}


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


async def actual_graph(graph: GraphStore, story_id: str) -> dict[str, Any]:
    out = {}
    for name, cypher in _GRAPH_QUERIES.items():
        rows = await graph.query(cypher, id=story_id)
        out[name] = Counter(tuple(row.values()) for row in rows)
    return out


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


async def list_story_ids(nc: Client, settings: Settings) -> list[str]:
    """Every story in the log: the subjects holding a creation event."""
    with nats_errors(f"listing the stories of stream {settings.stream_name}"):
        info = await nc.jsm().stream_info(
            settings.stream_name, subjects_filter=f"{settings.subject_prefix}.*.context_created.>"
        )
    stories = {subject.rsplit(".", 3)[-3] for subject in (info.state.subjects or {})}
    if settings.archive_url:  # creation events past the retention horizon live in the archive only
        from fleet_actors.archive.segments import Archive

        manifest = await Archive(settings.archive_url, settings.stream_name).manifest()
        stories.update(story for segment in manifest.segments for story in segment.stories)
    return sorted(stories)


async def verify_story(
    store: JetStreamEventStore, cache: ContextCache | None, graph: GraphStore, story_id: str
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


async def verify(settings: Settings, story_ids: list[str] | None = None, *, documents: bool = True) -> VerifyReport:
    """Compare the graph (and, unless ``documents`` is False, the context documents) with the log."""
    from fleet_actors.archive.composite import open_event_store

    # archive + stream with FLEET_ARCHIVE_URL: the whole history
    store = await open_event_store(settings, update_stream=False)
    cache = await ContextCache.connect(settings)
    graph = await GraphStore.connect(settings)
    try:
        ids = story_ids if story_ids is not None else await list_story_ids(store.connection, settings)
        report = VerifyReport()
        for story_id in ids:
            report.stories.append(await verify_story(store, cache if documents else None, graph, story_id))
        return report
    finally:
        await graph.close()
        await cache.close()
        await store.close()
