"""The one place that maps events to the graph.

``plan_graph_writes`` turns an ordered run of events into parameterised UNWIND statements
(portable Neo4j 5 Cypher: parameters only, fixed labels and relationship types, no APOC). The
statements are ordered so that every node exists before an edge or update refers to it; within a
statement rows keep event order, so later updates of the same node win.

Graph shape::

    (:Story {story_id, title, description, phase, status, version, created_at, updated_at, ...})
    (:Story)-[:HAS_SUBTASK]->(:Subtask {uid, story_id, subtask_id, ...})
    (:Story)-[:HAS_DECISION]->(:Decision {uid, story_id, decision_id, ...})
    (:Decision)-[:DEPENDS_ON|SUPERSEDES]->(:Decision)
    (:Decision)-[:IMPACTS]->(:Subtask)
    (:Subtask)-[:DEPENDS_ON]->(:Subtask)
    (:Story)-[:HAS_TRANSITION]->(:PhaseTransition {uid, from_phase, to_phase, rationale, at, ...})
    (:Story)-[:HAS_MILESTONE]->(:Milestone {uid, kind, description, at, ...})

Node keys (``uid``) are ``{story_id}/{local id}``: ids are unique within a story only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet_actors.domain.alternatives import alternatives_json
from fleet_actors.domain.events import (
    ContextCreated,
    DecisionAdded,
    DecisionImpacted,
    DecisionRelated,
    DecisionStatusChanged,
    EventEnvelope,
    MilestoneRecorded,
    PhaseTransitioned,
    SubtaskCreated,
    SubtaskUpdated,
    SummaryRecorded,
)
from fleet_actors.domain.state import StoryState

CONSTRAINTS = (
    "CREATE CONSTRAINT story_id IF NOT EXISTS FOR (n:Story) REQUIRE n.story_id IS UNIQUE",
    "CREATE CONSTRAINT subtask_uid IF NOT EXISTS FOR (n:Subtask) REQUIRE n.uid IS UNIQUE",
    "CREATE CONSTRAINT decision_uid IF NOT EXISTS FOR (n:Decision) REQUIRE n.uid IS UNIQUE",
    "CREATE CONSTRAINT transition_uid IF NOT EXISTS FOR (n:PhaseTransition) REQUIRE n.uid IS UNIQUE",
    "CREATE CONSTRAINT milestone_uid IF NOT EXISTS FOR (n:Milestone) REQUIRE n.uid IS UNIQUE",
    "CREATE CONSTRAINT snapshot_uid IF NOT EXISTS FOR (n:ContextSnapshot) REQUIRE n.uid IS UNIQUE",
)

#: the applied version of each story (the exactly-once guard), read in the writing transaction
READ_VERSIONS = "UNWIND $ids AS id OPTIONAL MATCH (s:Story {story_id: id}) RETURN id, s.version AS version"


def uid(story_id: str, local_id: str) -> str:
    return f"{story_id}/{local_id}"


def iso(envelope: EventEnvelope) -> str:
    return envelope.timestamp.isoformat()


@dataclass(frozen=True)
class Statement:
    cypher: str
    rows: list[dict[str, Any]]


def chained(statements: Sequence[Statement]) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """One query running the statements in order, each over its own rows parameter.

    A graph server charges a fixed cost per statement (a round trip, parsing, planning) that
    dwarfs the per-row cost when batches are small, as they are at a steady command rate.
    ``WITH count(*) AS _`` ends each part with exactly one row, so a part whose rows are empty
    (or match nothing) does not stop the parts after it. Only fixed fragments are joined: user
    data stays in parameters.
    """
    parts, parameters = [], {}
    for index, statement in enumerate(statements):
        name = f"rows{index}"
        parts.append(statement.cypher.strip().replace("$rows", f"${name}", 1))
        parameters[name] = statement.rows
    return "\nWITH count(*) AS _\n".join(parts), parameters


_CREATE_STORY = """
UNWIND $rows AS r
MERGE (s:Story {story_id: r.story_id})
SET s.title = r.title, s.description = r.description, s.phase = r.phase, s.created_at = r.at,
    s.created_by = r.actor, s.version = 0
"""
_CREATE_SUBTASK = """
UNWIND $rows AS r
MATCH (s:Story {story_id: r.story_id})
MERGE (t:Subtask {uid: r.uid})
SET t.story_id = r.story_id, t.subtask_id = r.subtask_id, t.title = r.title, t.description = r.description,
    t.role = r.role, t.status = 'PENDING', t.priority = r.priority, t.estimated_hours = r.estimated_hours,
    t.created_at = r.at, t.updated_at = r.at
MERGE (s)-[:HAS_SUBTASK]->(t)
"""
_SUBTASK_DEPENDS_ON = """
UNWIND $rows AS r
MATCH (a:Subtask {uid: r.src}), (b:Subtask {uid: r.dst})
MERGE (a)-[:DEPENDS_ON]->(b)
"""
_ADD_DECISION = """
UNWIND $rows AS r
MATCH (s:Story {story_id: r.story_id})
MERGE (d:Decision {uid: r.uid})
SET d.story_id = r.story_id, d.decision_id = r.decision_id, d.decision_type = r.decision_type, d.title = r.title,
    d.rationale = r.rationale, d.alternatives = r.alternatives, d.decided_by = r.decided_by, d.decided_at = r.at,
    d.metadata = r.metadata, d.status = 'ACCEPTED'
MERGE (s)-[:HAS_DECISION]->(d)
"""
#: one statement for status changes and touches (status null), so rows keep event order: with two
#: statements a touch of an earlier event overwrote a later update's time (found by `verify`)
_UPDATE_SUBTASK = """
UNWIND $rows AS r
MATCH (t:Subtask {uid: r.uid})
SET t.status = coalesce(r.status, t.status), t.updated_at = r.at
"""
_DECISION_STATUS = """
UNWIND $rows AS r
MATCH (d:Decision {uid: r.uid})
SET d.status = r.status
"""
# Relationship types cannot be parameters in Cypher; one fixed statement per type keeps user input out.
_DECISION_DEPENDS_ON = """
UNWIND $rows AS r
MATCH (a:Decision {uid: r.src}), (b:Decision {uid: r.dst})
MERGE (a)-[:DEPENDS_ON]->(b)
"""
_DECISION_SUPERSEDES = """
UNWIND $rows AS r
MATCH (a:Decision {uid: r.src}), (b:Decision {uid: r.dst})
MERGE (a)-[:SUPERSEDES]->(b)
SET b.status = 'SUPERSEDED'
"""
_IMPACTS = """
UNWIND $rows AS r
MATCH (d:Decision {uid: r.decision}), (t:Subtask {uid: r.subtask})
MERGE (d)-[:IMPACTS]->(t)
"""
_TRANSITION = """
UNWIND $rows AS r
MATCH (s:Story {story_id: r.story_id})
MERGE (p:PhaseTransition {uid: r.uid})
SET p.story_id = r.story_id, p.from_phase = r.from_phase, p.to_phase = r.to_phase, p.rationale = r.rationale,
    p.at = r.at, p.actor = r.actor, p.version = r.version
MERGE (s)-[:HAS_TRANSITION]->(p)
"""
_MILESTONE = """
UNWIND $rows AS r
MATCH (s:Story {story_id: r.story_id})
MERGE (m:Milestone {uid: r.uid})
SET m.story_id = r.story_id, m.milestone_id = r.milestone_id, m.kind = r.kind, m.description = r.description,
    m.at = r.at, m.actor = r.actor
MERGE (s)-[:HAS_MILESTONE]->(m)
"""
#: last: the story's folded summary and the version guard, in the same transaction as the changes
_STORY_SUMMARY = """
UNWIND $rows AS r
MATCH (s:Story {story_id: r.story_id})
SET s.phase = r.phase, s.status = r.status, s.last_summary = r.last_summary, s.version = r.version,
    s.updated_at = r.updated_at
"""


#: snapshots as the original plan asks: (:Story)-[:HAS_SNAPSHOT]->(:ContextSnapshot {story_id, version, at})
SNAPSHOT_NODES = """
UNWIND $rows AS r
MATCH (s:Story {story_id: r.story_id})
MERGE (c:ContextSnapshot {uid: r.uid})
SET c.story_id = r.story_id, c.version = r.version, c.at = r.at
MERGE (s)-[:HAS_SNAPSHOT]->(c)
"""


def snapshot_row(story_id: str, version: int, at: str) -> dict[str, Any]:
    return {"uid": uid(story_id, f"snapshot-{version}"), "story_id": story_id, "version": version, "at": at}


def plan_graph_writes(events: Sequence[EventEnvelope], states: Iterable[StoryState]) -> list[Statement]:
    """Statements for ``events`` (already filtered by the version guard), then the story summaries."""
    rows: dict[str, list[dict[str, Any]]] = {}

    def add(cypher: str, row: dict[str, Any]) -> None:
        rows.setdefault(cypher, []).append(row)

    for envelope in events:
        event, sid = envelope.payload, envelope.story_id
        base = {"story_id": sid, "at": iso(envelope), "actor": envelope.actor}
        match event:
            case ContextCreated():
                add(
                    _CREATE_STORY,
                    {**base, "title": event.title, "description": event.description, "phase": event.initial_phase},
                )
            case SubtaskCreated():
                add(
                    _CREATE_SUBTASK,
                    {
                        **base,
                        "uid": uid(sid, event.subtask_id),
                        "subtask_id": event.subtask_id,
                        "title": event.title,
                        "description": event.description,
                        "role": event.role,
                        "priority": event.priority,
                        "estimated_hours": event.estimated_hours,
                    },
                )
                for dependency in event.dependencies:
                    add(_SUBTASK_DEPENDS_ON, {"src": uid(sid, event.subtask_id), "dst": uid(sid, dependency)})
            case SubtaskUpdated():
                # An unrecognised v1 status upcasts to "": the status stays, only the time moves.
                add(_UPDATE_SUBTASK, {**base, "uid": uid(sid, event.subtask_id), "status": event.status or None})
            case DecisionAdded():
                add(
                    _ADD_DECISION,
                    {
                        **base,
                        "uid": uid(sid, event.decision_id),
                        "decision_id": event.decision_id,
                        "decision_type": event.decision_type,
                        "title": event.title,
                        "rationale": event.rationale,
                        "alternatives": alternatives_json(event.alternatives),
                        "decided_by": event.decided_by or envelope.actor,
                        "metadata": json.dumps(dict(event.metadata), sort_keys=True),
                    },
                )
            case DecisionStatusChanged():
                add(_DECISION_STATUS, {"uid": uid(sid, event.decision_id), "status": event.status})
            case DecisionRelated():
                statement = _DECISION_SUPERSEDES if event.relation_type == "SUPERSEDES" else _DECISION_DEPENDS_ON
                add(statement, {"src": uid(sid, event.src_id), "dst": uid(sid, event.dst_id)})
            case DecisionImpacted():
                add(_IMPACTS, {"decision": uid(sid, event.decision_id), "subtask": uid(sid, event.subtask_id)})
            case PhaseTransitioned():
                add(
                    _TRANSITION,
                    {
                        **base,
                        "uid": uid(sid, envelope.event_id),
                        "from_phase": event.from_phase,
                        "to_phase": event.to_phase,
                        "rationale": event.rationale,
                        "version": envelope.version,
                    },
                )
            case MilestoneRecorded():
                add(
                    _MILESTONE,
                    {
                        **base,
                        "uid": uid(sid, event.milestone_id),
                        "milestone_id": event.milestone_id,
                        "kind": event.kind,
                        "description": event.description,
                    },
                )
            case SummaryRecorded():
                pass  # carried by the story summary below
            case _:
                pass  # an event type with no graph shape changes only the version
    ordered = [
        _CREATE_STORY, _CREATE_SUBTASK, _SUBTASK_DEPENDS_ON, _ADD_DECISION, _UPDATE_SUBTASK,
        _DECISION_DEPENDS_ON, _DECISION_SUPERSEDES, _DECISION_STATUS, _IMPACTS, _TRANSITION, _MILESTONE,
    ]  # fmt: skip
    statements = [Statement(cypher, rows[cypher]) for cypher in ordered if cypher in rows]
    summaries = [
        {
            "story_id": s.story_id,
            "phase": s.phase,
            "status": s.status,
            "last_summary": s.last_summary,
            "version": s.version,
            "updated_at": s.updated_at.isoformat() if s.updated_at else None,
        }
        for s in states
    ]
    if summaries:
        statements.append(Statement(_STORY_SUMMARY, summaries))
    return statements
