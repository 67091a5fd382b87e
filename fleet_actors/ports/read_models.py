"""The read side's ports: the decision graph, the context documents, the projectors' control
records (pause flags, published status, rebuild progress) and the dead-letter index.

Projections and queries are written against these; the Neo4j and Valkey adapters implement them
for production and the in-memory fakes (``adapters/memory``) for fast tests. One contract suite
(``tests/contracts``) holds both to the same rules, chief among them the version guard that makes
the projector's effect exactly-once: a read model applies a story's events only in order, never
twice, and reports a gap instead of skipping one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet_actors.domain.alternatives import alternatives_json
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState


@dataclass
class GraphApplyResult:
    #: story -> graph version after the transaction
    versions: dict[str, int] = field(default_factory=dict)
    #: stories whose first new event does not follow the graph's version (missing events: heal from the log)
    gaps: dict[str, int] = field(default_factory=dict)
    applied_events: int = 0


@dataclass(frozen=True)
class SnapshotLink:
    """A snapshot of a story, shown in the graph as a node hanging off the story."""

    story_id: str
    version: int
    #: ISO time the snapshot covers ("" when unknown)
    at: str


@dataclass(frozen=True)
class GraphCensus:
    """The whole graph's counts, for ``verify``: Story nodes, the nodes hanging off them (subtasks,
    decisions, transitions, milestones; snapshots aside), their relationships, and orphans (story
    nodes no Story points at)."""

    stories: int
    nodes: int
    edges: int
    #: up to a limit, "Label uid" of each orphan
    orphans: list[str] = field(default_factory=list)
    orphan_count: int = 0


@dataclass(frozen=True)
class ContextDocument:
    story_id: str
    version: int
    state: StoryState


def plan_apply(
    versions: Mapping[str, int],
    events: Mapping[str, Sequence[EventEnvelope]],
    states: Mapping[str, StoryState],
) -> tuple[GraphApplyResult, list[EventEnvelope], list[StoryState]]:
    """The version guard every graph read model applies: of each story's events, only those after
    its applied version, and only if the first of them follows it (otherwise a gap is reported
    and the story is left as it is). Returns the result, the events to write and the states that
    set the stories' summaries."""
    result = GraphApplyResult()
    to_apply: list[EventEnvelope] = []
    touched: list[StoryState] = []
    for story_id, story_events in events.items():
        current = versions.get(story_id, 0)
        fresh = [e for e in story_events if e.version > current]
        result.versions[story_id] = current
        if not fresh:
            continue
        if fresh[0].version != current + 1 or states[story_id].version != fresh[-1].version:
            result.gaps[story_id] = current
            continue
        to_apply.extend(fresh)
        touched.append(states[story_id])
        result.versions[story_id] = fresh[-1].version
    result.applied_events = len(to_apply)
    return result, to_apply, touched


#: the columns ``story_rows`` answers for each part, in the order of :func:`expected_graph`'s tuples
STORY_PART_COLUMNS: dict[str, tuple[str, ...]] = {
    "story": ("title", "description", "phase", "status", "version", "last_summary", "created_by", "created_at",
              "updated_at"),
    "subtasks": ("id", "title", "description", "role", "status", "priority", "estimated_hours", "created_at",
                 "updated_at"),
    "subtask_dependencies": ("src", "dst"),
    "decisions": ("id", "decision_type", "title", "rationale", "alternatives", "decided_by", "decided_at", "metadata",
                  "status"),
    "decision_relations": ("src", "type", "dst"),
    "impacts": ("decision", "subtask"),
    "milestones": ("id", "kind", "description", "at", "actor"),
    "transitions": ("src", "dst", "rationale", "at", "actor"),
}  # fmt: skip


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def expected_graph(state: StoryState) -> dict[str, Counter[tuple[Any, ...]]]:
    """What a graph read model must hold for a story in this state, by part: every property the graph
    mapping writes (multisets: duplicates count). ``story_rows`` answers in the same column order."""
    story = (
        [(state.title, state.description, state.phase, state.status, state.version, state.last_summary,
          state.created_by, _iso(state.created_at), _iso(state.updated_at))]
        if state.created else []
    )  # fmt: skip
    return {
        "story": Counter(story),
        "subtasks": Counter(
            (
                s.subtask_id,
                s.title,
                s.description,
                s.role,
                s.status,
                s.priority,
                s.estimated_hours,
                _iso(s.created_at),
                _iso(s.updated_at),
            )
            for s in state.subtasks.values()
        ),
        "subtask_dependencies": Counter((s.subtask_id, d) for s in state.subtasks.values() for d in s.dependencies),
        "decisions": Counter(
            (
                d.decision_id,
                d.decision_type,
                d.title,
                d.rationale,
                alternatives_json(d.alternatives),
                d.decided_by,
                _iso(d.decided_at),
                json.dumps(dict(d.metadata), sort_keys=True),
                d.status,
            )
            for d in state.decisions.values()
        ),
        "decision_relations": Counter((r.src_id, r.relation_type, r.dst_id) for r in state.relations),
        "impacts": Counter((i.decision_id, i.subtask_id) for i in state.impacts),
        "milestones": Counter((m.milestone_id, m.kind, m.description, _iso(m.at), m.actor) for m in state.milestones),
        "transitions": Counter(
            (p.from_phase, p.to_phase, p.rationale, _iso(p.at), p.actor) for p in state.phase_history
        ),
    }


class GraphReadModel(ABC):
    """The decision graph: each story's events applied exactly once, in order."""

    @abstractmethod
    async def apply(
        self, events: Mapping[str, Sequence[EventEnvelope]], states: Mapping[str, StoryState]
    ) -> GraphApplyResult:
        """Apply each story's events atomically, skipping what the graph already has (see :func:`plan_apply`).

        ``states[story]`` is the story folded up to its last event in ``events``.
        """

    @abstractmethod
    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        """The version each story's subgraph includes (stories the graph lacks are left out or 0)."""

    @abstractmethod
    async def link_snapshots(self, links: Sequence[SnapshotLink]) -> None:
        """Show snapshots as nodes of their stories (idempotent)."""

    @abstractmethod
    async def wipe_stories(self, story_ids: Sequence[str]) -> None:
        """Delete these stories' subgraphs and nothing else."""

    @abstractmethod
    async def story_rows(self, story_id: str) -> dict[str, list[dict[str, Any]]]:
        """What the graph holds for one story, by part (story, subtasks, decisions, ...), for ``verify``:
        every property the graph mapping writes, in the column order of ``projections.verify.expected_graph``."""

    @abstractmethod
    async def census(self, orphan_limit: int = 20) -> GraphCensus:
        """Whole-graph counts and orphans (see :class:`GraphCensus`)."""

    @abstractmethod
    async def neighbourhood(
        self, node_type: str, node_id: str, depth: int, limit: int
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """A node (``story``, ``task`` or ``decision``; None if missing) and up to ``limit`` relationships
        within ``depth`` of it.

        The node is ``{eid, labels, props, version}`` (its story's graph version); each relationship is
        ``{src, src_labels, src_props, dst, dst_labels, dst_props, type, props}``.
        """

    @abstractmethod
    async def qualified_ids(self, node_type: str, plain_id: str, limit: int) -> list[str]:
        """The ``{story}/{id}`` forms of a ``task`` or ``decision`` named by its own id (sorted, at most ``limit``)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise BackendUnavailable unless the graph answers."""

    @abstractmethod
    async def close(self) -> None: ...


class ContextDocuments(ABC):
    """Per-story context documents (the folded state), newest version wins, with the projectors'
    processed-event marks and consumer offsets committed together with them."""

    async def get(self, story_id: str) -> ContextDocument | None:
        return (await self.get_many([story_id]))[story_id]

    @abstractmethod
    async def get_many(self, story_ids: Sequence[str]) -> dict[str, ContextDocument | None]:
        """Every requested story, None where there is no readable document."""

    @abstractmethod
    async def versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        """The version of each story's document (stories without one are left out)."""

    @abstractmethod
    async def commit(
        self,
        states: Iterable[StoryState],
        processed_event_ids: Iterable[str] = (),
        offsets: Mapping[str, int] | None = None,
    ) -> None:
        """Atomically: each state replaces its document only if newer; the ids and offsets are recorded."""

    @abstractmethod
    async def already_processed(self, event_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    async def offset(self, consumer: str) -> int | None: ...

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ParkedEvent:
    story_id: str
    version: int
    stream_sequence: int
    subject: str
    consumer: str
    error: str
    deliveries: int
    parked_at: str
    dlq_sequence: int = 0
    #: the user projection that parked it ("" for the built-in graph and document projectors)
    projection: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ParkedEvent:
        return cls(**json.loads(raw))


class DeadLetterIndex(ABC):
    """Which stories are held for a parked event, and the releases operators asked for."""

    @abstractmethod
    async def hold(self, parked: ParkedEvent) -> None: ...

    @abstractmethod
    async def held(self) -> dict[str, ParkedEvent]: ...

    @abstractmethod
    async def request_release(self, story_id: str, action: str) -> None: ...

    @abstractmethod
    async def pending_releases(self) -> dict[str, str]: ...

    @abstractmethod
    async def drop_release(self, story_id: str) -> None:
        """The release failed again (the story stays held): forget the request."""

    @abstractmethod
    async def released(self, story_id: str) -> None:
        """The story is caught up: neither held nor waiting for a release any more."""


class ProjectionControl(ABC):
    """The records projectors, rebuilds and operator tools coordinate through."""

    @abstractmethod
    async def pausing_job(self) -> str | None:
        """The rebuild job that asked the live projectors to stay off the graph, if any."""

    @abstractmethod
    async def pause(self, job_id: str) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @abstractmethod
    async def acknowledge_pause(self, job_id: str, consumers: Sequence[str], ttl_seconds: int) -> None:
        """A projector says its consumers are paused for ``job_id`` (expires unless repeated)."""

    @abstractmethod
    async def paused_for(self, consumer: str) -> str | None:
        """The job a consumer last acknowledged a pause for, while that acknowledgement lasts."""

    @abstractmethod
    async def publish_status(self, projector: str, status: Mapping[str, Any]) -> None: ...

    @abstractmethod
    async def status(self, projector: str) -> dict[str, Any]:
        """The status a projector last published ({} if none)."""

    @abstractmethod
    async def statuses(self) -> dict[str, dict[str, Any]]:
        """Every projector's last published status, of any pool size (stale ones included: see ``heartbeat``)."""

    @abstractmethod
    async def job_progress(self, job_id: str) -> dict[str, str]: ...

    @abstractmethod
    async def record_job_progress(self, job_id: str, **fields: str) -> None: ...

    @abstractmethod
    async def rebuild_jobs(self) -> dict[str, dict[str, str]]:
        """Every rebuild job recorded for this stream: job id -> its progress record."""

    @abstractmethod
    async def close(self) -> None: ...
