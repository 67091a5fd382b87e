"""Honest in-memory read models: the same version guards and atomicity as the Neo4j and Valkey
adapters (``tests/contracts`` holds both to one suite), for tests of projection logic in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.ports.checkpoints import ProjectionCheckpoints
from fleet_actors.ports.read_models import (
    STORY_PART_COLUMNS,
    ContextDocument,
    ContextDocuments,
    DeadLetterIndex,
    GraphApplyResult,
    GraphCensus,
    GraphReadModel,
    ParkedEvent,
    ProjectionControl,
    SnapshotLink,
    expected_graph,
    plan_apply,
)


class InMemoryGraph(GraphReadModel):
    """Each story's applied version and the states it was built from; parts as ``verify`` reads them."""

    def __init__(self) -> None:
        self.states: dict[str, StoryState] = {}
        self.snapshots: set[tuple[str, int]] = set()

    async def apply(
        self, events: Mapping[str, Sequence[EventEnvelope]], states: Mapping[str, StoryState]
    ) -> GraphApplyResult:
        versions = {story_id: self.states[story_id].version for story_id in events if story_id in self.states}
        result, _, touched = plan_apply(versions, events, states)
        for state in touched:
            self.states[state.story_id] = state
        return result

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return {s: self.states[s].version for s in story_ids if s in self.states}

    async def link_snapshots(self, links: Sequence[SnapshotLink]) -> None:
        self.snapshots.update((link.story_id, link.version) for link in links if link.story_id in self.states)

    async def wipe_stories(self, story_ids: Sequence[str]) -> None:
        for story_id in story_ids:
            self.states.pop(story_id, None)
            self.snapshots = {s for s in self.snapshots if s[0] != story_id}

    async def story_rows(self, story_id: str) -> dict[str, list[dict[str, Any]]]:
        state = self.states.get(story_id)
        if state is None:
            return {part: [] for part in _PARTS}
        # rows keyed by column position, in the order verify compares them
        return {
            part: [dict(zip(STORY_PART_COLUMNS[part], row, strict=True)) for row in rows.elements()]
            for part, rows in expected_graph(state).items()
        }

    async def census(self, orphan_limit: int = 20) -> GraphCensus:
        states = list(self.states.values())
        nodes = sum(len(s.subtasks) + len(s.decisions) + len(s.phase_history) + len(s.milestones) for s in states)
        edges = nodes + sum(
            sum(len(t.dependencies) for t in s.subtasks.values()) + len(s.relations) + len(s.impacts) for s in states
        )
        return GraphCensus(len(states), nodes, edges)

    async def neighbourhood(
        self, node_type: str, node_id: str, depth: int, limit: int
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if node_type == "story" and node_id in self.states:
            state = self.states[node_id]
            return {"eid": node_id, "labels": ["Story"], "props": {"story_id": node_id}, "version": state.version}, []
        return None, []

    async def qualified_ids(self, node_type: str, plain_id: str, limit: int) -> list[str]:
        found = [
            f"{story_id}/{plain_id}"
            for story_id, state in self.states.items()
            if plain_id in (state.subtasks if node_type == "task" else state.decisions)
        ]
        return sorted(found)[:limit]

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


_PARTS = (
    "story", "subtasks", "subtask_dependencies", "decisions", "decision_relations", "impacts", "milestones",
    "transitions",
)  # fmt: skip


class InMemoryDocuments(ContextDocuments):
    def __init__(self) -> None:
        self.documents: dict[str, StoryState] = {}
        self.processed: set[str] = set()
        self.offsets: dict[str, int] = {}

    async def get_many(self, story_ids: Sequence[str]) -> dict[str, ContextDocument | None]:
        return {
            s: ContextDocument(s, self.documents[s].version, self.documents[s]) if s in self.documents else None
            for s in story_ids
        }

    async def versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return {s: self.documents[s].version for s in story_ids if s in self.documents}

    async def commit(
        self,
        states: Iterable[StoryState],
        processed_event_ids: Iterable[str] = (),
        offsets: Mapping[str, int] | None = None,
    ) -> None:
        for state in states:
            current = self.documents.get(state.story_id)
            if current is None or state.version > current.version:
                self.documents[state.story_id] = state
        self.processed.update(processed_event_ids)
        self.offsets.update(offsets or {})

    async def already_processed(self, event_ids: Sequence[str]) -> set[str]:
        return {e for e in event_ids if e in self.processed}

    async def offset(self, consumer: str) -> int | None:
        return self.offsets.get(consumer)

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


class InMemoryDeadLetterIndex(DeadLetterIndex):
    def __init__(self) -> None:
        self._held: dict[str, ParkedEvent] = {}
        self._releases: dict[str, str] = {}

    async def hold(self, parked: ParkedEvent) -> None:
        self._held[parked.story_id] = parked

    async def held(self) -> dict[str, ParkedEvent]:
        return dict(self._held)

    async def request_release(self, story_id: str, action: str) -> None:
        self._releases[story_id] = action

    async def pending_releases(self) -> dict[str, str]:
        return dict(self._releases)

    async def drop_release(self, story_id: str) -> None:
        self._releases.pop(story_id, None)

    async def released(self, story_id: str) -> None:
        self._held.pop(story_id, None)
        self._releases.pop(story_id, None)


class InMemoryProjectionControl(ProjectionControl):
    """Acknowledgements do not expire here (no clock in the fake): ``paused_for`` is the last one."""

    def __init__(self) -> None:
        self._job: str | None = None
        self._paused: dict[str, str] = {}
        self._status: dict[str, dict[str, Any]] = {}
        self._progress: dict[str, dict[str, str]] = {}

    async def pausing_job(self) -> str | None:
        return self._job

    async def pause(self, job_id: str) -> None:
        self._job = job_id

    async def resume(self) -> None:
        self._job = None

    async def acknowledge_pause(self, job_id: str, consumers: Sequence[str], ttl_seconds: int) -> None:
        self._paused.update({name: job_id for name in consumers})

    async def paused_for(self, consumer: str) -> str | None:
        return self._paused.get(consumer)

    async def publish_status(self, projector: str, status: Mapping[str, Any]) -> None:
        self._status[projector] = dict(status)

    async def status(self, projector: str) -> dict[str, Any]:
        return dict(self._status.get(projector, {}))

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return {projector: dict(status) for projector, status in self._status.items()}

    async def job_progress(self, job_id: str) -> dict[str, str]:
        return dict(self._progress.get(job_id, {}))

    async def record_job_progress(self, job_id: str, **fields: str) -> None:
        self._progress.setdefault(job_id, {}).update(fields)

    async def rebuild_jobs(self) -> dict[str, dict[str, str]]:
        return {job: dict(fields) for job, fields in self._progress.items()}

    async def close(self) -> None:
        pass


class InMemoryProjectionCheckpoints(ProjectionCheckpoints):
    def __init__(self) -> None:
        self._versions: dict[str, dict[str, int]] = {}
        self._registered: dict[str, dict[str, Any]] = {}
        self._progress: dict[str, dict[str, dict[str, Any]]] = {}

    async def versions(self, projection: str, story_ids: Sequence[str]) -> dict[str, int]:
        mine = self._versions.get(projection, {})
        return {story_id: mine.get(story_id, 0) for story_id in story_ids}

    async def advance(self, projection: str, versions: Mapping[str, int]) -> None:
        mine = self._versions.setdefault(projection, {})
        for story_id, version in versions.items():
            mine[story_id] = max(mine.get(story_id, 0), version)

    async def register(self, projection: str, record: Mapping[str, Any]) -> None:
        self._registered[projection] = json.loads(json.dumps(dict(record)))

    async def registered(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in sorted(self._registered.items())}

    async def publish_progress(self, projection: str, worker: str, progress: Mapping[str, Any]) -> None:
        self._progress.setdefault(projection, {})[worker] = json.loads(json.dumps(dict(progress)))

    async def progress(self, projection: str) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in sorted(self._progress.get(projection, {}).items())}

    async def remove(self, projection: str) -> None:
        self._registered.pop(projection, None)
        self._versions.pop(projection, None)
        self._progress.pop(projection, None)

    async def close(self) -> None:
        pass
