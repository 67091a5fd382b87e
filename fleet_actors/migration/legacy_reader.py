"""Reads a legacy context graph over Bolt into plain dataclasses, one page of stories at a time.

Reading has two passes: a light listing of every story node (id, element id, timestamps) that
selects the stories to read and reports story nodes that cannot be keyed (missing, non-text,
badly shaped or shared ids), then per page of ids a fixed set of queries (story, subtasks and
their dependencies, decisions, their relations and impacts, milestones).

Nothing it cannot map is dropped silently: malformed nodes and edges become :class:`Problem`
records and the rest of the story is kept. Values are normalised only where the domain has a
documented default (a missing status is PENDING, a missing phase DESIGN, a missing priority 3).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import neo4j
import neo4j.time
from neo4j import AsyncGraphDatabase

from fleet_actors.adapters.neo4j import translate_neo4j_error
from fleet_actors.domain import rules
from fleet_actors.domain.alternatives import alternatives_from
from fleet_actors.domain.events import Alternative
from fleet_actors.domain.state import Phase, RelationType, SubtaskStatus
from fleet_actors.errors import InvalidCommand
from fleet_actors.migration.mapping import DEFAULT_MAPPING, LegacyMapping
from fleet_actors.urls import redact_url

DEFAULT_PAGE_SIZE = 100
PHASES = frozenset(p.value for p in Phase)
STATUSES = frozenset(s.value for s in SubtaskStatus)


@dataclass(frozen=True)
class LegacySource:
    """Where the legacy graph lives; ``database`` None means the server's default database."""

    uri: str
    user: str = "neo4j"
    password: str = ""
    database: str | None = None


@dataclass(frozen=True)
class Problem:
    """Something in the legacy graph that could not be mapped as it is."""

    #: the story it belongs to; "" for a story node without a usable id
    story_id: str
    #: the node or edge, e.g. "subtask T3" or "Story #1:7"
    node: str
    reason: str

    def __str__(self) -> str:
        where = f"story {self.story_id}, " if self.story_id else ""
        return f"{where}{self.node}: {self.reason}"


@dataclass(frozen=True)
class LegacySubtask:
    subtask_id: str
    title: str
    role: str
    #: a domain status, or the legacy value upper-cased when it is unknown (reported as a problem)
    status: str = SubtaskStatus.PENDING.value
    description: str = ""
    priority: int = 3
    estimated_hours: int = 0
    dependencies: tuple[str, ...] = ()
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class LegacyDecision:
    decision_id: str
    title: str
    rationale: str
    decision_type: str = "ARCHITECTURE"
    alternatives: tuple[Alternative, ...] = ()
    decided_by: str = ""
    decided_at: dt.datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, order=True)
class LegacyRelation:
    src_id: str
    dst_id: str
    relation_type: str


@dataclass(frozen=True, order=True)
class LegacyImpact:
    decision_id: str
    subtask_id: str


@dataclass(frozen=True)
class LegacyMilestone:
    milestone_id: str
    kind: str
    description: str = ""
    at: dt.datetime | None = None
    actor: str = ""


@dataclass(frozen=True)
class LegacyStory:
    story_id: str
    title: str
    description: str = ""
    #: a domain phase, or the legacy value upper-cased when it is unknown (reported as a problem)
    phase: str = Phase.DESIGN.value
    created_at: dt.datetime | None = None
    created_by: str = ""
    updated_at: dt.datetime | None = None
    subtasks: tuple[LegacySubtask, ...] = ()
    decisions: tuple[LegacyDecision, ...] = ()
    relations: tuple[LegacyRelation, ...] = ()
    impacts: tuple[LegacyImpact, ...] = ()
    milestones: tuple[LegacyMilestone, ...] = ()
    problems: tuple[Problem, ...] = ()


@dataclass
class StoryListing:
    """The stories selected for reading, sorted, and the story nodes that cannot be read at all."""

    story_ids: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


# --- values ---------------------------------------------------------------------------------


def parse_time(value: object) -> dt.datetime | None:
    """A legacy timestamp as an aware UTC datetime; None when absent. Raises ValueError if unreadable.

    Accepted: native graph datetimes and dates, ISO 8601 text, and integers as epoch milliseconds
    (what Cypher's ``timestamp()`` returns). A time without a zone is taken as UTC.
    """
    if value is None:
        return None
    if isinstance(value, neo4j.time.DateTime):
        value = value.to_native()
    elif isinstance(value, neo4j.time.Date):
        value = dt.datetime.combine(value.to_native(), dt.time())
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r:.80} is not an ISO 8601 time") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    raise ValueError(f"{value!r:.80} ({type(value).__name__}) is not a time")


def _identified(
    story_id: str, nodes: Iterable[Any], section: Any, kind: str, problems: list[Problem], skipped: set[str]
) -> Iterator[tuple[str, str, _NodeReader]]:
    """Nodes with a usable id not taken by an earlier one, in element-id order, as (element id, id,
    reader); the others are reported and their element ids added to ``skipped``."""
    taken: set[str] = set()
    for node in sorted(nodes, key=_eid):
        reader = _NodeReader(story_id, f"{section.label} {_eid(node)}", _props(node), problems)
        local_id = reader.identifier(section.id)
        if local_id is None:
            skipped.add(_eid(node))
            continue
        reader.node = f"{kind} {local_id}"
        if local_id in taken:
            reader.problem(
                f"another {section.label} of this story has the same {section.id}; node {_eid(node)} skipped"
            )
            skipped.add(_eid(node))
            continue
        taken.add(local_id)
        yield _eid(node), local_id, reader


class _NodeReader:
    """Reads one node's mapped properties, collecting a Problem per unusable value."""

    def __init__(self, story_id: str, node: str, props: Mapping[str, Any], problems: list[Problem]) -> None:
        self.story_id, self.node, self.props, self.problems = story_id, node, props, problems

    def problem(self, reason: str) -> None:
        self.problems.append(Problem(self.story_id, self.node, reason))

    def text(self, name: str | None) -> str:
        value = self.props.get(name) if name else None
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.problem(f"{name} is a {type(value).__name__}, not text; left empty")
        return ""

    def integer(self, name: str | None, default: int) -> int:
        value = self.props.get(name) if name else None
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        self.problem(f"{name} {value!r:.40} is not an integer; imported as {default}")
        return default

    def time(self, name: str | None) -> dt.datetime | None:
        if not name:
            return None
        try:
            return parse_time(self.props.get(name))
        except ValueError as error:
            self.problem(f"{name} {error}; left out")
            return None

    def identifier(self, name: str) -> str | None:
        """The node's id if it has a valid one; otherwise a problem and None (the node is skipped)."""
        value = self.props.get(name)
        if value is None:
            self.problem(f"missing {name}; node skipped")
            return None
        if not isinstance(value, str) or not rules.ID_PATTERN.fullmatch(value):
            self.problem(f"{name} {value!r:.80} is not 1-64 letters, digits, '_' or '-'; node skipped")
            return None
        return value


def select_stories(
    rows: Sequence[Mapping[str, Any]], mapping: LegacyMapping, since: dt.datetime | None = None
) -> StoryListing:
    """Pick the readable stories from listing rows (``id``, ``eid``, ``updated_at``, ``created_at``).

    A story is selected by ``since`` when its updated_at (or, lacking one, created_at) is at or after
    it; a story with neither, or with an unreadable one, is selected too: it cannot be shown to be
    older, and importing an unchanged story is a no-op.
    """
    label, key = mapping.story.label, mapping.story.id
    listing = StoryListing()
    counts = Counter(row["id"] for row in rows if isinstance(row["id"], str))
    selected = set()
    for row in rows:
        story_id = row["id"]
        node = f"{label} {row['eid']}"
        if story_id is None:
            listing.problems.append(Problem("", node, f"missing {key}; story skipped"))
            continue
        if not isinstance(story_id, str) or not rules.ID_PATTERN.fullmatch(story_id):
            listing.problems.append(
                Problem("", node, f"{key} {story_id!r:.80} is not 1-64 letters, digits, '_' or '-'; story skipped")
            )
            continue
        if counts[story_id] > 1:
            listing.problems.append(
                Problem(story_id, node, f"{counts[story_id]} {label} nodes share this {key}; story skipped")
            )
            continue
        if since is not None:
            try:
                changed = parse_time(row.get("updated_at")) or parse_time(row.get("created_at"))
            except ValueError:
                changed = None
            if changed is not None and changed < since:
                continue
        selected.add(story_id)
    listing.story_ids = sorted(selected)
    return listing


# --- building stories from query rows ------------------------------------------------------


@dataclass
class StoryRows:
    """Every row the page queries returned for one story."""

    story: Any = None
    subtasks: list[Any] = field(default_factory=list)
    dependencies: list[Mapping[str, Any]] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)
    relations: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    impacts: list[Mapping[str, Any]] = field(default_factory=list)
    milestones: list[Any] = field(default_factory=list)


def _props(node: Any) -> Mapping[str, Any]:
    return dict(node.items()) if hasattr(node, "items") else dict(node)


def _eid(node: Any) -> str:
    return getattr(node, "element_id", "") or "?"


def build_story(story_id: str, rows: StoryRows, mapping: LegacyMapping) -> LegacyStory:
    """Turn one story's query rows into a LegacyStory plus its problems (pure; unit-testable)."""
    problems: list[Problem] = []
    sm, tm, dm = mapping.story, mapping.subtask, mapping.decision
    head = _NodeReader(story_id, f"{sm.label} node", _props(rows.story), problems)
    raw_phase = head.text(sm.phase)
    phase = mapping.phase(raw_phase) if raw_phase else Phase.DESIGN.value
    if phase not in PHASES:
        head.problem(f"unknown phase {raw_phase!r:.40}; the story stays in DESIGN (map it in phase_aliases)")

    subtasks: dict[str, dict[str, Any]] = {}
    subtask_ids: dict[str, str] = {}  # element id -> subtask id, for edges
    skipped_subtasks: set[str] = set()
    for element, subtask_id, reader in _identified(story_id, rows.subtasks, tm, "subtask", problems, skipped_subtasks):
        raw_status = reader.text(tm.status)
        status = mapping.subtask_status(raw_status) if raw_status else SubtaskStatus.PENDING.value
        if status not in STATUSES:
            reader.problem(f"unknown status {raw_status!r:.40}; imported as PENDING (map it in status_aliases)")
        subtask_ids[element] = subtask_id
        subtasks[subtask_id] = {
            "subtask_id": subtask_id,
            "title": reader.text(tm.title),
            "role": reader.text(tm.role),
            "status": status,
            "description": reader.text(tm.description),
            "priority": reader.integer(tm.priority, 3),
            "estimated_hours": reader.integer(tm.estimated_hours, 0),
            "created_at": reader.time(tm.created_at),
            "updated_at": reader.time(tm.updated_at),
            "dependencies": set(),
        }

    def reference(kind: str, row: Mapping[str, Any], known: Mapping[str, str], skipped: set[str], src: str) -> str:
        """The id an edge points at, or "" after reporting why it cannot be followed."""
        target = known.get(row["dst"])
        if target is not None:
            return target
        if row["dst"] in skipped:
            reason = f"points at {kind} node {row['dst']}, which was skipped (see its problem); edge dropped"
        else:
            shown = row.get("dst_id") if row.get("dst_id") is not None else row["dst"]
            reason = f"points at {shown!r:.80}, which is not a {kind} of this story; edge dropped"
        problems.append(Problem(story_id, src, reason))
        return ""

    for row in rows.dependencies:
        src = subtask_ids.get(row["src"])
        if src is None:  # the subtask itself was skipped and reported
            continue
        dst = reference("subtask", row, subtask_ids, skipped_subtasks, f"subtask {src} -[{tm.depends_on}]->")
        if dst:
            subtasks[src]["dependencies"].add(dst)

    decisions: dict[str, LegacyDecision] = {}
    decision_ids: dict[str, str] = {}
    skipped_decisions: set[str] = set()
    for element, decision_id, reader in _identified(
        story_id, rows.decisions, dm, "decision", problems, skipped_decisions
    ):
        decision_ids[element] = decision_id
        decisions[decision_id] = LegacyDecision(
            decision_id=decision_id,
            title=reader.text(dm.title),
            rationale=reader.text(dm.rationale),
            decision_type=reader.text(dm.type) or "ARCHITECTURE",
            alternatives=_alternatives(reader, dm.alternatives),
            decided_by=reader.text(dm.decided_by),
            decided_at=reader.time(dm.decided_at),
            metadata=_metadata(reader, dm.metadata),
        )

    relations = set()
    for relation_type, edge_rows in rows.relations.items():
        for row in edge_rows:
            src = decision_ids.get(row["src"])
            if src is None:
                continue
            edge = f"decision {src} -[{_relationship(mapping, relation_type)}]->"
            dst = reference("decision", row, decision_ids, skipped_decisions, edge)
            if dst:
                relations.add(LegacyRelation(src, dst, relation_type))

    impacts = set()
    for row in rows.impacts:
        src = decision_ids.get(row["src"])
        if src is None:
            continue
        dst = reference("subtask", row, subtask_ids, skipped_subtasks, f"decision {src} -[{dm.impacts}]->")
        if dst:
            impacts.add(LegacyImpact(src, dst))

    return LegacyStory(
        story_id=story_id,
        title=head.text(sm.title),
        description=head.text(sm.description),
        phase=phase,
        created_at=head.time(sm.created_at),
        created_by=head.text(sm.created_by),
        updated_at=head.time(sm.updated_at),
        subtasks=tuple(
            LegacySubtask(**{**values, "dependencies": tuple(sorted(values["dependencies"]))})
            for _, values in sorted(subtasks.items())
        ),
        decisions=tuple(decision for _, decision in sorted(decisions.items())),
        relations=tuple(sorted(relations)),
        impacts=tuple(sorted(impacts)),
        milestones=_milestones(story_id, rows.milestones, mapping, problems),
        problems=tuple(problems),
    )


def _relationship(mapping: LegacyMapping, relation_type: str) -> str | None:
    if relation_type == RelationType.SUPERSEDES:
        return mapping.decision.supersedes
    return mapping.decision.depends_on


def _metadata(reader: _NodeReader, name: str | None) -> dict[str, str]:
    value = reader.props.get(name) if name else None
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            reader.problem(f"{name} is not a JSON object; left empty")
            return {}
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    reader.problem(f"{name} is not a map of strings; left empty")
    return {}


def _alternatives(reader: _NodeReader, name: str | None) -> tuple[Alternative, ...]:
    """Free text (one per line, "title: reason"), a list of titles, or the JSON list the projection writes."""
    value = reader.props.get(name) if name else None
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # text that merely starts with a bracket
        else:
            if isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
                value = [(str(item.get("title", "")), str(item.get("reason") or "")) for item in value]
    try:
        return alternatives_from(value if isinstance(value, str | list | type(None)) else [value])
    except InvalidCommand as error:
        reader.problem(f"{name}: {error.message}; left empty")
        return ()


def _milestones(
    story_id: str, nodes: Sequence[Any], mapping: LegacyMapping, problems: list[Problem]
) -> tuple[LegacyMilestone, ...]:
    mm = mapping.milestone
    found: dict[str, LegacyMilestone] = {}
    unnamed: list[LegacyMilestone] = []
    for node in sorted(nodes, key=_eid):
        props = _props(node)
        reader = _NodeReader(story_id, f"{mm.label} {_eid(node)}", props, problems)
        given = props.get(mm.id) if mm.id else None
        milestone_id = reader.identifier(mm.id) if given is not None and mm.id else ""
        if milestone_id is None:
            continue
        if milestone_id:
            reader.node = f"milestone {milestone_id}"
        milestone = LegacyMilestone(
            milestone_id, reader.text(mm.kind), reader.text(mm.description), reader.time(mm.at), reader.text(mm.actor)
        )
        if not milestone_id:
            unnamed.append(milestone)
        elif milestone_id in found:
            reader.problem(f"another {mm.label} of this story has the same {mm.id}; node {_eid(node)} skipped")
        else:
            found[milestone_id] = milestone
    # Milestone ids are optional in the domain; derive them from content so a re-run derives the same.
    for milestone in sorted(unnamed, key=lambda m: (m.at or dt.datetime.min.replace(tzinfo=dt.UTC), m.kind)):
        digest = hashlib.sha256(f"{milestone.kind}|{milestone.at}|{milestone.description}".encode()).hexdigest()
        candidate, n = f"m-{digest[:12]}", 1
        while candidate in found:
            n += 1
            candidate = f"m-{digest[:12]}-{n}"
        found[candidate] = dataclasses.replace(milestone, milestone_id=candidate)
    return tuple(milestone for _, milestone in sorted(found.items()))


# --- the reader -----------------------------------------------------------------------------


class LegacyReader:
    """A read-only Bolt client for the legacy graph, with its own driver."""

    def __init__(self, driver: neo4j.AsyncDriver, source: LegacySource, mapping: LegacyMapping) -> None:
        self._driver = driver
        self._source = source
        self.mapping = mapping
        self._queries = _page_queries(mapping)

    @classmethod
    async def connect(cls, source: LegacySource, mapping: LegacyMapping = DEFAULT_MAPPING) -> LegacyReader:
        """Open a driver and check that the server answers (BackendUnavailable if not)."""
        driver = AsyncGraphDatabase.driver(
            source.uri, auth=(source.user, source.password), connection_acquisition_timeout=10.0
        )
        reader = cls(driver, source, mapping)
        try:
            await reader._query("RETURN 1 AS ok")
        except BaseException:
            await driver.close()
            raise
        return reader

    async def close(self) -> None:
        """Close the driver and its connections."""
        await self._driver.close()

    async def _query(self, cypher: str, **parameters: Any) -> list[neo4j.Record]:
        try:
            async with self._driver.session(
                database=self._source.database, default_access_mode=neo4j.READ_ACCESS
            ) as session:
                result = await session.run(cypher, parameters)
                return [record async for record in result]
        except Exception as error:
            raise translate_neo4j_error(error, f"reading the legacy graph at {redact_url(self._source.uri)}") from None

    async def list_stories(self, *, story_prefix: str = "", since: dt.datetime | None = None) -> StoryListing:
        """Every readable story id (optionally only those starting with ``story_prefix``), sorted."""
        sm = self.mapping.story
        updated = f"s.{sm.updated_at}" if sm.updated_at else "null"
        created = f"s.{sm.created_at}" if sm.created_at else "null"
        where = f"WHERE s.{sm.id} STARTS WITH $prefix " if story_prefix else ""
        records = await self._query(
            f"MATCH (s:{sm.label}) {where}"
            f"RETURN s.{sm.id} AS id, elementId(s) AS eid, {updated} AS updated_at, {created} AS created_at",
            prefix=story_prefix,
        )
        return select_stories([record.data() for record in records], self.mapping, since)

    async def read_stories(self, story_ids: Sequence[str]) -> list[LegacyStory]:
        """One page: the full legacy content of each story, in the order given."""
        ids = list(story_ids)
        rows = {story_id: StoryRows() for story_id in ids}
        for record in await self._query(self._queries["story"], ids=ids):
            rows[record["id"]].story = record["node"]
        for record in await self._query(self._queries["subtasks"], ids=ids):
            rows[record["id"]].subtasks.append(record["node"])
        for record in await self._query(self._queries["decisions"], ids=ids):
            rows[record["id"]].decisions.append(record["node"])
        for record in await self._query(self._queries["milestones"], ids=ids):
            rows[record["id"]].milestones.append(record["node"])
        for name in ("dependencies", "impacts"):
            if name in self._queries:  # the mapping may have no such relationship
                for record in await self._query(self._queries[name], ids=ids):
                    getattr(rows[record["id"]], name).append(record.data())
        for relation_type in RelationType:
            cypher = self._queries.get(f"relations:{relation_type.value}")
            if cypher:
                for record in await self._query(cypher, ids=ids):
                    rows[record["id"]].relations.setdefault(relation_type.value, []).append(record.data())
        # A story deleted since the listing has no story row: it no longer exists, so there is nothing to read.
        return [build_story(story_id, rows[story_id], self.mapping) for story_id in ids if rows[story_id].story]

    async def pages(
        self, story_ids: Sequence[str], page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[LegacyStory]]:
        """``read_stories`` over ``story_ids`` in pages of ``page_size``."""
        for start in range(0, len(story_ids), page_size):
            yield await self.read_stories(story_ids[start : start + page_size])


def _page_queries(mapping: LegacyMapping) -> dict[str, str]:
    """The page queries; every name in them comes from the validated mapping, every value is a parameter."""
    sm, tm, dm, mm = mapping.story, mapping.subtask, mapping.decision, mapping.milestone
    story = f"UNWIND $ids AS id MATCH (s:{sm.label} {{{sm.id}: id}})"
    queries = {
        "story": f"{story} RETURN id, s AS node",
        "subtasks": f"{story}-[:{tm.relationship}]->(t:{tm.label}) RETURN id, t AS node",
        "decisions": f"{story}-[:{dm.relationship}]->(d:{dm.label}) RETURN id, d AS node",
        "milestones": f"{story}-[:{mm.relationship}]->(m:{mm.label}) RETURN id, m AS node",
    }
    # The far end of an edge is matched without a label, so an edge to a foreign node is seen and reported.
    if tm.depends_on:
        queries["dependencies"] = (
            f"{story}-[:{tm.relationship}]->(t:{tm.label})-[:{tm.depends_on}]->(x) "
            f"RETURN id, elementId(t) AS src, elementId(x) AS dst, x.{tm.id} AS dst_id"
        )
    if dm.impacts:
        queries["impacts"] = (
            f"{story}-[:{dm.relationship}]->(d:{dm.label})-[:{dm.impacts}]->(x) "
            f"RETURN id, elementId(d) AS src, elementId(x) AS dst, x.{tm.id} AS dst_id"
        )
    for relation_type in RelationType:
        relationship = _relationship(mapping, relation_type)
        if relationship:
            queries[f"relations:{relation_type.value}"] = (
                f"{story}-[:{dm.relationship}]->(d:{dm.label})-[:{relationship}]->(x) "
                f"RETURN id, elementId(d) AS src, elementId(x) AS dst, x.{dm.id} AS dst_id"
            )
    return queries
