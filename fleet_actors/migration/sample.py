"""Generate a realistic legacy context graph (for tests and the demo) and write it with plain Cypher.

    python -m fleet_actors.migration.sample --stories 300 --uri bolt://127.0.0.1:7687 \\
        --user root --password ... [--prefix legacy] [--seed 0] [--with-problems] [--mapping FILE] [--replace]

Stories ``{prefix}-00000``, ... get 2-8 subtasks with dependencies on earlier ones, statuses that
fit their phase, 0-4 decisions with relations (only to earlier decisions, so never a cycle) and
impacts, 0-3 milestones and original timestamps (ISO text, or native datetimes in every fifth
story; now and then a subtask without times). ``--with-problems`` adds one malformed node or edge
to each of six stories (see :data:`FAULTS`). The graph follows the mapping (default: the shape the
projection writes); a private ``--prefix`` keeps samples apart in a shared database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import neo4j
from neo4j import AsyncGraphDatabase

from fleet_actors.adapters.neo4j import translate_neo4j_error
from fleet_actors.domain import rules
from fleet_actors.domain.events import Alternative
from fleet_actors.domain.state import Phase, RelationType, SubtaskStatus
from fleet_actors.errors import ConfigurationError, InvalidCommand, StoryError
from fleet_actors.migration.legacy_reader import (
    LegacyDecision,
    LegacyImpact,
    LegacyMilestone,
    LegacyRelation,
    LegacySource,
    LegacyStory,
    LegacySubtask,
)
from fleet_actors.migration.mapping import DEFAULT_MAPPING, LegacyMapping, load_mapping
from fleet_actors.urls import redact_url

DEFAULT_STORIES = 300
WRITE_PAGE = 50
#: one per story, in this order, on the first stories of the sample
FAULTS = (
    "subtask without an id",
    "subtask with a malformed id",
    "subtask with an unknown status",
    "decision impacting a subtask of another story",
    "subtask depending on a subtask of another story",
    "story with a malformed id",
)
_BASE = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
_VERBS = ("Add", "Rework", "Speed up", "Harden", "Migrate", "Simplify", "Instrument", "Localise")
_THINGS = ("checkout", "login", "search", "invoices", "onboarding", "audit log", "reports", "notifications",
           "billing export", "user settings", "file upload", "rate limits")  # fmt: skip
_TASKS = ("Design the schema", "Write the API", "Build the form", "Add tests", "Write the docs", "Wire metrics",
          "Review security", "Migrate data", "Load test", "Update the client")  # fmt: skip
_ROLES = ("DEV", "QA", "ARCHITECT", "DEVOPS", "DATA")
_PEOPLE = ("alice", "bob", "chen", "dana", "planner-agent", "dev-agent-3")
_DECISION_TYPES = ("ARCHITECTURE", "TECHNOLOGY", "PROCESS", "SECURITY")
_ALTERNATIVES = (
    (),
    (Alternative("build it ourselves", "too slow to deliver"),),
    (Alternative("a managed service", "cost"), Alternative("do nothing")),
)
_MILESTONES = ("KICKOFF", "DESIGN_REVIEW", "DEMO", "RELEASE")
_STATUS_BY_PHASE = {
    Phase.DESIGN: ((SubtaskStatus.PENDING, 8), (SubtaskStatus.IN_PROGRESS, 2), (SubtaskStatus.CANCELLED, 1)),
    Phase.BUILD: ((SubtaskStatus.PENDING, 3), (SubtaskStatus.IN_PROGRESS, 4), (SubtaskStatus.DONE, 3),
                  (SubtaskStatus.BLOCKED, 1), (SubtaskStatus.CANCELLED, 1)),
    Phase.TEST: ((SubtaskStatus.IN_PROGRESS, 2), (SubtaskStatus.DONE, 7), (SubtaskStatus.BLOCKED, 1)),
    Phase.DOCS: ((SubtaskStatus.DONE, 9), (SubtaskStatus.CANCELLED, 1)),
}  # fmt: skip


@dataclass
class SampleReport:
    stories: list[LegacyStory] = field(default_factory=list)
    #: (story id, fault) for every malformed node or edge written
    faults: list[tuple[str, str]] = field(default_factory=list)


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


def generate_story(rng: random.Random, story_id: str) -> LegacyStory:
    """One well-formed legacy story: what the reader must return for it."""
    created = _BASE + timedelta(days=rng.randrange(300), minutes=rng.randrange(600))
    clock = created
    phase = _pick(rng, ((Phase.DESIGN, 3), (Phase.BUILD, 4), (Phase.TEST, 2), (Phase.DOCS, 2)))

    def later(max_hours: int = 30) -> datetime:
        nonlocal clock
        clock += timedelta(hours=rng.randrange(1, max_hours), minutes=rng.randrange(60))
        return clock

    subtasks: list[LegacySubtask] = []
    for n in range(1, rng.randint(2, 8) + 1):
        earlier = [s.subtask_id for s in subtasks]
        dependencies = tuple(sorted(rng.sample(earlier, k=min(len(earlier), rng.choice((0, 0, 1, 1, 2))))))
        status = _pick(rng, _STATUS_BY_PHASE[phase]).value
        timeless = rng.random() < 0.1
        made = later()
        changed = made if status == SubtaskStatus.PENDING else made + timedelta(hours=rng.randrange(1, 72))
        subtasks.append(
            LegacySubtask(
                subtask_id=f"T{n}",
                title=rng.choice(_TASKS),
                role=rng.choice(_ROLES),
                status=status,
                description=f"step {n} of the story",
                priority=rng.randint(1, 5),
                estimated_hours=rng.randrange(0, 40),
                dependencies=dependencies,
                created_at=None if timeless else made,
                updated_at=None if timeless else changed,
            )
        )
    decisions, relations, impacts = [], set(), set()
    for n in range(1, rng.choice((0, 1, 2, 2, 3, 4)) + 1):
        decision_id = f"D{n}"
        decisions.append(
            LegacyDecision(
                decision_id=decision_id,
                title=f"Decision {n}: {rng.choice(_THINGS)}",
                rationale=rng.choice(("cheaper to run", "the team knows it", "fewer moving parts", "compliance")),
                decision_type=rng.choice(_DECISION_TYPES),
                alternatives=rng.choice(_ALTERNATIVES),
                decided_by=rng.choice(_PEOPLE),
                decided_at=later(),
                metadata={"adr": f"ADR-{rng.randrange(1, 200)}"} if rng.random() < 0.3 else {},
            )
        )
        if n > 1 and rng.random() < 0.6:
            relation_type = rng.choice((RelationType.DEPENDS_ON, RelationType.SUPERSEDES))
            relations.add(LegacyRelation(decision_id, f"D{rng.randrange(1, n)}", relation_type.value))
        for subtask in rng.sample(subtasks, k=rng.choice((0, 1, 1, 2))):
            impacts.add(LegacyImpact(decision_id, subtask.subtask_id))
    milestones = tuple(
        LegacyMilestone(f"M{n}", kind, f"{kind.lower().replace('_', ' ')} held", later(), rng.choice(_PEOPLE))
        for n, kind in enumerate(_MILESTONES[: rng.randrange(0, 4)], start=1)
    )
    times = [created, *(t for s in subtasks for t in (s.created_at, s.updated_at) if t), clock]
    return LegacyStory(
        story_id=story_id,
        title=f"{rng.choice(_VERBS)} {rng.choice(_THINGS)}",
        description=f"generated legacy story {story_id}",
        phase=phase.value,
        created_at=created,
        created_by=rng.choice(_PEOPLE),
        updated_at=max(times),
        subtasks=tuple(subtasks),
        decisions=tuple(decisions),
        relations=tuple(sorted(relations)),
        impacts=tuple(sorted(impacts)),
        milestones=milestones,
    )


def generate_sample(stories: int, *, prefix: str = "legacy", seed: int = 0) -> list[LegacyStory]:
    """``stories`` well-formed legacy stories with ids ``{prefix}-00000``, ... (deterministic for a seed)."""
    if stories < 1:
        raise InvalidCommand("--stories must be at least 1", field="stories")
    rules.check_id(f"{prefix}-00000", "prefix")
    rng = random.Random(seed)
    return [generate_story(rng, f"{prefix}-{n:05d}") for n in range(stories)]


# --- writing --------------------------------------------------------------------------------


def _props(section: object, native: bool, **values: object) -> dict[str, Any]:
    """Mapped property name -> value for a node, leaving out unmapped properties and missing values."""
    out = {}
    for key, value in values.items():
        name = getattr(section, key)
        if name is None or value is None:
            continue
        out[name] = value if native or not isinstance(value, datetime) else value.isoformat()
    return out


def _alternatives_text(alternatives: Sequence[Alternative]) -> str | None:
    # Legacy graphs keep alternatives as free text, one per line: "title: reason".
    lines = [f"{a.title}: {a.reason}" if a.reason else a.title for a in alternatives]
    return "\n".join(lines) or None


class SampleWriter:
    """Writes legacy stories into a graph with the mapping's labels, relationship types and properties."""

    def __init__(self, driver: neo4j.AsyncDriver, database: str | None, mapping: LegacyMapping) -> None:
        self._driver = driver
        self._database = database
        self.mapping = mapping
        sm, tm, dm, mm = mapping.story, mapping.subtask, mapping.decision, mapping.milestone
        story = f"UNWIND $rows AS r MATCH (s:{sm.label} {{{sm.id}: r.story}})"
        subtask_pair = (
            f"UNWIND $rows AS r MATCH (s:{sm.label} {{{sm.id}: r.story}})-[:{tm.relationship}]->"
            f"(a:{tm.label} {{{tm.id}: r.src}}), (o:{sm.label} {{{sm.id}: r.other}})-[:{tm.relationship}]->"
            f"(b:{tm.label} {{{tm.id}: r.dst}})"
        )
        decision_pair = (
            f"UNWIND $rows AS r MATCH (s:{sm.label} {{{sm.id}: r.story}})-[:{dm.relationship}]->"
            f"(a:{dm.label} {{{dm.id}: r.src}}), (s)-[:{dm.relationship}]->(b:{dm.label} {{{dm.id}: r.dst}})"
        )
        impact_pair = (
            f"UNWIND $rows AS r MATCH (s:{sm.label} {{{sm.id}: r.story}})-[:{dm.relationship}]->"
            f"(a:{dm.label} {{{dm.id}: r.src}}), (o:{sm.label} {{{sm.id}: r.other}})-[:{tm.relationship}]->"
            f"(b:{tm.label} {{{tm.id}: r.dst}})"
        )
        self._cypher = {
            "stories": f"UNWIND $rows AS r CREATE (s:{sm.label}) SET s = r.props",
            "subtasks": f"{story} CREATE (s)-[:{tm.relationship}]->(t:{tm.label}) SET t = r.props",
            "decisions": f"{story} CREATE (s)-[:{dm.relationship}]->(d:{dm.label}) SET d = r.props",
            "milestones": f"{story} CREATE (s)-[:{mm.relationship}]->(m:{mm.label}) SET m = r.props",
        }
        if tm.depends_on:
            self._cypher["dependencies"] = f"{subtask_pair} CREATE (a)-[:{tm.depends_on}]->(b)"
        if dm.impacts:
            self._cypher["impacts"] = f"{impact_pair} CREATE (a)-[:{dm.impacts}]->(b)"
        for relation_type in RelationType:
            name = dm.supersedes if relation_type == RelationType.SUPERSEDES else dm.depends_on
            if name:
                self._cypher[f"relations:{relation_type.value}"] = f"{decision_pair} CREATE (a)-[:{name}]->(b)"
        children = sorted({tm.relationship, dm.relationship, mm.relationship})
        self._delete = (
            f"MATCH (s:{sm.label}) WHERE s.{sm.id} STARTS WITH $prefix "
            f"OPTIONAL MATCH (s)-[:{'|'.join(children)}]->(n) DETACH DELETE n, s"
        )

    @classmethod
    async def connect(cls, source: LegacySource, mapping: LegacyMapping = DEFAULT_MAPPING) -> SampleWriter:
        """Open a driver and make sure the story id is indexed."""
        driver = AsyncGraphDatabase.driver(source.uri, auth=(source.user, source.password))
        writer = cls(driver, source.database, mapping)
        try:
            sm = mapping.story
            # MERGE/MATCH by id without an index scans every node of the label.
            await writer._run(
                f"CREATE CONSTRAINT sample_{sm.label.lower()}_{sm.id.lower()} IF NOT EXISTS "
                f"FOR (n:{sm.label}) REQUIRE n.{sm.id} IS UNIQUE"
            )
        except BaseException:
            await driver.close()
            raise
        return writer

    async def close(self) -> None:
        """Close the driver and its connections."""
        await self._driver.close()

    async def _run(self, cypher: str, **parameters: Any) -> list[dict[str, Any]]:
        try:
            async with self._driver.session(database=self._database) as session:
                result = await session.run(cypher, parameters)
                return [record.data() async for record in result]
        except Exception as error:
            raise translate_neo4j_error(error, "writing the sample graph") from None

    async def count(self, prefix: str) -> int:
        """How many stories have an id starting with ``prefix``."""
        sm = self.mapping.story
        cypher = f"MATCH (s:{sm.label}) WHERE s.{sm.id} STARTS WITH $prefix RETURN count(s) AS n"
        rows = await self._run(cypher, prefix=prefix)
        return int(rows[0]["n"])

    async def delete(self, prefix: str) -> None:
        """Remove every story whose id starts with ``prefix``, with its subtasks, decisions and milestones."""
        await self._run(self._delete, prefix=prefix)

    def _rows(self, story: LegacyStory, native: bool) -> dict[str, list[dict[str, Any]]]:
        sm, tm, dm, mm = self.mapping.story, self.mapping.subtask, self.mapping.decision, self.mapping.milestone
        sid = story.story_id
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in self._cypher}
        props = _props(
            sm,
            native,
            id=sid,
            title=story.title,
            description=story.description,
            phase=story.phase,
            created_at=story.created_at,
            created_by=story.created_by,
            updated_at=story.updated_at,
        )
        rows["stories"].append({"props": props})
        for s in story.subtasks:
            props = _props(
                tm,
                native,
                id=s.subtask_id,
                title=s.title,
                description=s.description,
                role=s.role,
                status=s.status,
                priority=s.priority,
                estimated_hours=s.estimated_hours,
                created_at=s.created_at,
                updated_at=s.updated_at,
            )
            rows["subtasks"].append({"story": sid, "props": props})
            for dependency in s.dependencies:
                rows["dependencies"].append({"story": sid, "src": s.subtask_id, "other": sid, "dst": dependency})
        for d in story.decisions:
            props = _props(
                dm,
                native,
                id=d.decision_id,
                title=d.title,
                rationale=d.rationale,
                type=d.decision_type,
                alternatives=_alternatives_text(d.alternatives),
                decided_by=d.decided_by,
                decided_at=d.decided_at,
                metadata=json.dumps(dict(d.metadata), sort_keys=True) if d.metadata else None,
            )
            rows["decisions"].append({"story": sid, "props": props})
        for r in story.relations:
            rows[f"relations:{r.relation_type}"].append({"story": sid, "src": r.src_id, "dst": r.dst_id})
        for i in story.impacts:
            rows["impacts"].append({"story": sid, "src": i.decision_id, "other": sid, "dst": i.subtask_id})
        for m in story.milestones:
            props = _props(
                mm, native, id=m.milestone_id, kind=m.kind, description=m.description, at=m.at, actor=m.actor
            )
            rows["milestones"].append({"story": sid, "props": props})
        return rows

    async def write(self, stories: Sequence[LegacyStory]) -> None:
        """Write the stories, a page per transaction; every fifth story keeps native datetimes."""
        for start in range(0, len(stories), WRITE_PAGE):
            page: dict[str, list[dict[str, Any]]] = {name: [] for name in self._cypher}
            for offset, story in enumerate(stories[start : start + WRITE_PAGE], start=start):
                for name, rows in self._rows(story, native=offset % 5 == 4).items():
                    page[name].extend(rows)

            async def work(tx: neo4j.AsyncManagedTransaction, page: dict[str, list[dict[str, Any]]] = page) -> None:
                for name, cypher in self._cypher.items():  # stories first, then children, then edges
                    if page[name]:
                        await (await tx.run(cypher, rows=page[name])).consume()

            try:
                async with self._driver.session(database=self._database) as session:
                    await session.execute_write(work)
            except Exception as error:
                raise translate_neo4j_error(error, "writing the sample graph") from None

    async def write_faults(self, stories: Sequence[LegacyStory], prefix: str) -> list[tuple[str, str]]:
        """Add one malformed node or edge to each of the first stories (see FAULTS)."""
        if len(stories) < len(FAULTS) + 1:
            raise InvalidCommand(f"--with-problems needs at least {len(FAULTS) + 1} stories", field="stories")
        sm, tm, dm = self.mapping.story, self.mapping.subtask, self.mapping.decision
        if not (tm.status and tm.depends_on and dm.impacts):
            raise ConfigurationError("--with-problems needs a mapping with subtask status, dependencies and impacts")
        s0, s1, s2, s3, s4, _ = (story.story_id for story in stories[: len(FAULTS)])
        neighbour = stories[len(FAULTS)].story_id
        odd = [
            ({tm.title: "Orphan task", tm.role: "DEV"}, s0),
            ({tm.id: "bad id!", tm.title: "Badly named task", tm.role: "DEV"}, s1),
            ({tm.id: "X1", tm.title: "Task in a private state", tm.role: "QA", tm.status: "WIP"}, s2),
        ]
        await self._run(self._cypher["subtasks"], rows=[{"story": sid, "props": props} for props, sid in odd])
        await self._run(
            self._cypher["decisions"],
            rows=[{"story": s3, "props": {dm.id: "DX", dm.title: "Shared library", dm.rationale: "reuse"}}],
        )
        await self._run(self._cypher["impacts"], rows=[{"story": s3, "src": "DX", "other": neighbour, "dst": "T1"}])
        foreign = {"story": s4, "src": "T1", "other": neighbour, "dst": "T1"}
        await self._run(self._cypher["dependencies"], rows=[foreign])
        bad_story = f"{prefix}-bad id"
        await self._run(self._cypher["stories"], rows=[{"props": {sm.id: bad_story, sm.title: "Story with a space"}}])
        return list(zip((s0, s1, s2, s3, s4, bad_story), FAULTS, strict=True))


async def write_sample(
    source: LegacySource,
    stories: int = DEFAULT_STORIES,
    *,
    prefix: str = "legacy",
    seed: int = 0,
    with_problems: bool = False,
    mapping: LegacyMapping = DEFAULT_MAPPING,
    replace: bool = False,
) -> SampleReport:
    """Generate and write a sample; refuses a prefix already in use unless ``replace`` deletes it first."""
    generated = generate_sample(stories, prefix=prefix, seed=seed)
    writer = await SampleWriter.connect(source, mapping)
    try:
        existing = await writer.count(f"{prefix}-")
        if existing and not replace:
            raise ConfigurationError(
                f"the graph already holds {existing} stories with ids starting {prefix}-; "
                "pass --replace to delete them first, or choose another --prefix"
            )
        if existing:
            await writer.delete(f"{prefix}-")
        await writer.write(generated)
        faults = await writer.write_faults(generated, prefix) if with_problems else []
    finally:
        await writer.close()
    return SampleReport(generated, faults)


def main(argv: Sequence[str] | None = None) -> int:
    """The script entry: ``python -m fleet_actors.migration.sample``."""
    parser = argparse.ArgumentParser(prog="python -m fleet_actors.migration.sample", description=__doc__.split("\n")[0])
    parser.add_argument("--stories", type=int, default=DEFAULT_STORIES, help=f"default {DEFAULT_STORIES}")
    parser.add_argument(
        "--uri",
        default=os.environ.get("FLEET_NEO4J_URI", "bolt://127.0.0.1:7687"),
        help="Bolt URI of the graph to write (default: FLEET_NEO4J_URI or bolt://127.0.0.1:7687)",
    )
    parser.add_argument("--user", default=os.environ.get("FLEET_NEO4J_USER", "neo4j"))
    parser.add_argument(
        "--password", default=os.environ.get("FLEET_NEO4J_PASSWORD", ""), help="default: FLEET_NEO4J_PASSWORD"
    )
    parser.add_argument("--database", default=None, help="default: the server's default database")
    parser.add_argument("--prefix", default="legacy", help="story ids are PREFIX-00000, ... (default: legacy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-problems", action="store_true", help="add malformed nodes and edges to six stories")
    parser.add_argument("--mapping", metavar="FILE", help="JSON mapping of labels and properties (default: ours)")
    parser.add_argument("--replace", action="store_true", help="delete existing stories with this prefix first")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(
            write_sample(
                LegacySource(args.uri, args.user, args.password, args.database),
                args.stories,
                prefix=args.prefix,
                seed=args.seed,
                with_problems=args.with_problems,
                mapping=load_mapping(args.mapping),
                replace=args.replace,
            )
        )
    except StoryError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code
    stories = report.stories
    print(
        f"wrote {len(stories)} stories, {sum(len(s.subtasks) for s in stories)} subtasks, "
        f"{sum(len(s.decisions) for s in stories)} decisions, {sum(len(s.milestones) for s in stories)} milestones"
        f"{f', {len(report.faults)} malformed nodes or edges' if report.faults else ''} to {redact_url(args.uri)}"
    )
    for story_id, fault in report.faults:
        print(f"  {story_id}: {fault}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
