"""Turn each legacy story into a genesis history of ordinary commands and append it through the normal store.

Planning (:func:`plan_genesis`) is pure: it orders the creation commands a team would have sent
(CreateStory; CreateSubtask in dependency order; AddDecision with the legacy ids; RelateDecisions;
RecordImpact; UpdateSubtask along the shortest valid status path, e.g. PENDING -> IN_PROGRESS ->
DONE; TransitionPhase one step at a time; RecordMilestone), gives each the legacy time it stands
for, and runs them through ``decide``/``evolve`` on a scratch state, so every planned command is
one the domain accepts; the ones it rejects become problems.

Execution (:func:`import_legacy`) sends the plan through :class:`StoryRuntime`: load, decide,
append with the per-story concurrency check, with a clock that returns each command's legacy time.
Command ids are deterministic (``import-<story>-<n>of<total>``), which makes the import idempotent:

* a story with no events is imported;
* a story whose events begin with this import's first command and already hold all ``total`` of
  them is *already imported* (nothing is written);
* a story whose import stopped part-way (a crash, a lost connection) and whose import events are
  still a prefix of today's plan is *resumed*; commands that other writers appended meanwhile stay;
* any other existing story (created by someone else, or a partial import the legacy graph has
  moved away from) is *skipped* and reported; ``migrate verify`` shows how it differs.

Times: a fact's own legacy time where the graph has one. Facts without one are placed at the
earliest time their prerequisites allow (a subtask at its story's creation, a relation at its later
decision), except states whose start is unknown (a subtask's status without ``updated_at``, the
phase), which are placed at the story's last known change: the graph only shows they held then.
No command is placed before one it depends on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime, utc_now
from fleet_actors.domain import rules
from fleet_actors.domain.commands import (
    AddDecision,
    Command,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.events import Event, EventEnvelope
from fleet_actors.domain.state import PHASE_ORDER, SUBTASK_TRANSITIONS, Phase, StoryState, SubtaskStatus
from fleet_actors.domain.story import Accepted, decide, evolve
from fleet_actors.errors import ConcurrencyConflict, InvalidCommand, RuleViolation, StoryAlreadyExists, StoryNotFound
from fleet_actors.migration.legacy_reader import DEFAULT_PAGE_SIZE, LegacyReader, LegacyStory, Problem
from fleet_actors.ports.event_store import EventStore

#: the actor of imported commands that have no legacy author
IMPORT_ACTOR = "legacy-import"
#: stories imported at once; each is a short sequence of appends, so a few overlap the round trips
DEFAULT_CONCURRENCY = 8
#: a command that keeps losing the race against live writers is tried this often (it is idempotent),
#: backing off exponentially with jitter up to CONFLICT_BACKOFF_MAX seconds: about half a minute in all
CONFLICT_ATTEMPTS = 200
CONFLICT_BACKOFF_MAX = 0.25

_COMMAND_ID = re.compile(r"import-(?P<key>[A-Za-z0-9_-]+)-(?P<n>\d+)of(?P<total>\d+)")


class Action(StrEnum):
    """What the import does with one story (see the module docstring)."""

    IMPORT = "import"
    RESUME = "resume"
    ALREADY_IMPORTED = "already imported"
    EXISTS = "exists"


# --- planning (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class GenesisStep:
    """One planned command with the legacy time and author it carries."""

    command: Command
    at: datetime
    actor: str
    #: the legacy node the command comes from (for problems)
    node: str
    #: what the domain decided for it during planning
    event: Event


@dataclass(frozen=True)
class GenesisPlan:
    """A story's genesis: the accepted commands in order, and what could not be planned."""

    story_id: str
    steps: tuple[GenesisStep, ...]
    problems: tuple[Problem, ...]
    #: the story as the plan leaves it
    state: StoryState

    def command_id(self, n: int) -> str:
        """The deterministic command id of step ``n``."""
        return import_command_id(self.story_id, n, len(self.steps))


def _story_key(story_id: str) -> str:
    # Command ids are limited to 64 characters like every id; long story ids are replaced by a digest.
    return story_id if len(story_id) <= 40 else hashlib.sha256(story_id.encode()).hexdigest()[:16]


def import_command_id(story_id: str, n: int, total: int) -> str:
    """The id of the ``n``-th of ``total`` genesis commands of a story: stable across runs."""
    return f"import-{_story_key(story_id)}-{n}of{total}"


def parse_import_command_id(story_id: str, command_id: str) -> tuple[int, int] | None:
    """``(n, total)`` if ``command_id`` is a genesis command of this story, else None."""
    match = _COMMAND_ID.fullmatch(command_id)
    if match is None or match["key"] != _story_key(story_id):
        return None
    return int(match["n"]), int(match["total"])


def status_path(target: str) -> tuple[str, ...]:
    """The shortest run of statuses from PENDING to ``target`` the subtask state machine allows."""
    start = SubtaskStatus.PENDING
    paths: dict[SubtaskStatus, tuple[str, ...]] = {start: ()}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for following in sorted(SUBTASK_TRANSITIONS[current]):
            if following not in paths:
                paths[following] = (*paths[current], following.value)
                queue.append(following)
    try:
        return paths.get(SubtaskStatus(target), ())
    except ValueError:  # an unknown legacy status (reported by the reader): the subtask stays PENDING
        return ()


def phase_path(target: str) -> tuple[str, ...]:
    """The forward steps from DESIGN to ``target`` (none for an unknown phase)."""
    try:
        return tuple(p.value for p in PHASE_ORDER[1 : PHASE_ORDER.index(Phase(target)) + 1])
    except ValueError:  # an unknown legacy phase (reported by the reader): the story stays in DESIGN
        return ()


@dataclass(order=True)
class _Candidate:
    at: datetime
    #: ties at one time: story, subtasks, decisions, relations, impacts, statuses, phases, milestones
    category: int
    index: int
    command: Command = field(compare=False)
    actor: str = field(compare=False)
    node: str = field(compare=False)


def _dependency_order(story: LegacyStory, problems: list[Problem]) -> list[tuple[str, tuple[str, ...]]]:
    """Subtasks with their dependencies, each after everything it depends on; cycle-closing edges dropped."""
    by_id = {s.subtask_id: s for s in story.subtasks}
    order: list[tuple[str, tuple[str, ...]]] = []
    done: set[str] = set()
    # Depth-first, with an explicit stack: a long chain of dependencies must not hit the recursion limit.
    for root in sorted(by_id):
        if root in done:
            continue
        active = {root}
        stack: list[tuple[str, Iterator[str], list[str]]] = [(root, iter(by_id[root].dependencies), [])]
        while stack:
            subtask_id, pending, kept = stack[-1]
            for dependency in pending:
                if dependency in active:
                    reason = f"dependency on {dependency} closes a cycle; that dependency is dropped"
                    problems.append(Problem(story.story_id, f"subtask {subtask_id}", reason))
                    continue
                kept.append(dependency)
                if dependency in by_id and dependency not in done:
                    active.add(dependency)
                    stack.append((dependency, iter(by_id[dependency].dependencies), []))
                    break
            else:
                stack.pop()
                active.discard(subtask_id)
                done.add(subtask_id)
                order.append((subtask_id, tuple(kept)))
    return order


def plan_genesis(story: LegacyStory, *, now: datetime) -> GenesisPlan:
    """The genesis commands for ``story``, ordered, timed and accepted by the domain.

    ``now`` is the time used only when the story has no timestamp at all.
    """
    problems = list(story.problems)
    known = [
        t
        for t in (
            story.created_at,
            story.updated_at,
            *(t for s in story.subtasks for t in (s.created_at, s.updated_at)),
            *(d.decided_at for d in story.decisions),
            *(m.at for m in story.milestones),
        )
        if t is not None
    ]
    created = story.created_at or min(known, default=now)
    as_of = max(story.updated_at or max(known, default=created), created)
    candidates: list[_Candidate] = []

    # fmt: off
    def add(at: datetime, category: int, index: int, command: Command, node: str, actor: str = IMPORT_ACTOR) -> None:
        candidates.append(_Candidate(at, category, index, command, actor, node))

    add(created, 0, 0, CreateStory(story.title, story.description), f"story {story.story_id}",
        story.created_by or IMPORT_ACTOR)
    subtasks = {s.subtask_id: s for s in story.subtasks}
    subtask_time: dict[str, datetime] = {}
    for index, (subtask_id, dependencies) in enumerate(_dependency_order(story, problems)):
        s = subtasks[subtask_id]
        floor = max([created, *(subtask_time[d] for d in dependencies if d in subtask_time)])
        subtask_time[subtask_id] = max(floor, s.created_at or floor)
        add(subtask_time[subtask_id], 1, index,
            CreateSubtask(subtask_id, s.title, s.role, s.description, dependencies, s.priority, s.estimated_hours),
            f"subtask {subtask_id}")
        status_time = max(subtask_time[subtask_id], s.updated_at or as_of)
        for step, status in enumerate(status_path(s.status)):
            add(status_time, 5, index * 10 + step, UpdateSubtask(subtask_id, status), f"subtask {subtask_id}")
    decision_time: dict[str, datetime] = {}
    for index, d in enumerate(story.decisions):
        decision_time[d.decision_id] = max(created, d.decided_at or created)
        add(decision_time[d.decision_id], 2, index,
            AddDecision(d.title, d.rationale, d.decision_type, d.decision_id, d.alternatives, d.decided_by,
                        dict(d.metadata)),
            f"decision {d.decision_id}")
    for index, r in enumerate(story.relations):
        at = max(decision_time.get(r.src_id, created), decision_time.get(r.dst_id, created))
        add(at, 3, index, RelateDecisions(r.src_id, r.dst_id, r.relation_type),
            f"decision {r.src_id} -{r.relation_type}-> {r.dst_id}")
    for index, i in enumerate(story.impacts):
        at = max(decision_time.get(i.decision_id, created), subtask_time.get(i.subtask_id, created))
        add(at, 4, index, RecordImpact(i.decision_id, i.subtask_id), f"decision {i.decision_id} impacts {i.subtask_id}")
    for index, phase in enumerate(phase_path(story.phase)):
        add(as_of, 6, index, TransitionPhase(phase), f"story {story.story_id} phase {phase}")
    for index, m in enumerate(story.milestones):
        add(max(created, m.at or as_of), 7, index, RecordMilestone(m.kind, m.description, m.milestone_id),
            f"milestone {m.milestone_id}", m.actor or IMPORT_ACTOR)
    # fmt: on

    state = StoryState(story.story_id)
    steps: list[GenesisStep] = []
    #: subtasks and decisions the domain refused: what refers to them is dropped with a pointer to why
    refused: set[tuple[str, str]] = set()
    for candidate in sorted(candidates):
        command = candidate.command
        if isinstance(command, UpdateSubtask) and ("subtask", command.subtask_id) in refused:
            continue  # the subtask's own problem says why
        if isinstance(command, CreateSubtask):
            missing = [d for d in command.dependencies if d not in state.subtasks]
            for dependency in missing:
                reason = f"dependency on {dependency} dropped: that subtask could not be imported"
                problems.append(Problem(story.story_id, candidate.node, reason))
            if missing:
                kept = tuple(d for d in command.dependencies if d not in missing)
                command = dataclasses.replace(command, dependencies=kept)
        gone = _refused_references(command, refused)
        if gone:
            problems.append(Problem(story.story_id, candidate.node, f"dropped: {gone} could not be imported"))
            continue
        result = decide(state, command)
        if not isinstance(result, Accepted):
            problems.append(Problem(story.story_id, candidate.node, f"not imported: {result.error.message}"))
            if isinstance(command, CreateStory):
                break  # without the story nothing else can be imported
            if isinstance(command, CreateSubtask):
                refused.add(("subtask", command.subtask_id))
            elif isinstance(command, AddDecision) and command.decision_id:
                refused.add(("decision", command.decision_id))
            continue
        for event in result.events:
            envelope = EventEnvelope("", story.story_id, state.version + 1, candidate.at, event, actor=candidate.actor)
            state = evolve(state, envelope)
            steps.append(GenesisStep(command, candidate.at, candidate.actor, candidate.node, event))
    return GenesisPlan(story.story_id, tuple(steps), tuple(problems), state)


def _refused_references(command: Command, refused: set[tuple[str, str]]) -> str:
    """The refused subtask or decision a relation or impact refers to ("" if none)."""
    if isinstance(command, RelateDecisions):
        wanted = [("decision", command.src_id), ("decision", command.dst_id)]
    elif isinstance(command, RecordImpact):
        wanted = [("decision", command.decision_id), ("subtask", command.subtask_id)]
    else:
        return ""
    return next((f"{kind} {key}" for kind, key in wanted if (kind, key) in refused), "")


def classify(plan: GenesisPlan, existing: Sequence[EventEnvelope]) -> tuple[Action, int, str]:
    """What to do with a story given its events in the log: the action, the first step to run, a note."""
    if not existing:
        return Action.IMPORT, 0, ""
    first = parse_import_command_id(plan.story_id, existing[0].command_id)
    if first is None or first[0] != 0:
        return Action.EXISTS, 0, "already in the log (not created by the import); compare with `migrate verify`"
    total = first[1]
    ours = [e for e in existing if parse_import_command_id(plan.story_id, e.command_id) is not None]
    if len(ours) >= total:
        return Action.ALREADY_IMPORTED, total, ""
    planned = [(plan.command_id(n), step.event) for n, step in enumerate(plan.steps[: len(ours)])]
    if total == len(plan.steps) and [(e.command_id, e.payload) for e in ours] == planned:
        return Action.RESUME, len(ours), f"resuming an interrupted import at step {len(ours)} of {total}"
    return (
        Action.EXISTS,
        0,
        (
            f"an interrupted import ({len(ours)} of {total} steps) no longer matches the legacy graph; "
            "compare with `migrate verify`"
        ),
    )


# --- execution ------------------------------------------------------------------------------


@dataclass
class StoryOutcome:
    """What the import did (or, in a dry run, would do) with one story."""

    story_id: str
    action: Action
    #: events appended (dry run: that would be appended)
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    note: str = ""


@dataclass
class ImportReport:
    """Every story's outcome and every problem of one run."""

    dry_run: bool = False
    outcomes: list[StoryOutcome] = field(default_factory=list)
    #: story nodes that could not be read at all (no usable id)
    listing_problems: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [*self.listing_problems, *(p for o in self.outcomes for p in o.problems)]

    @property
    def events(self) -> int:
        return sum(o.events for o in self.outcomes)

    def count(self, action: Action) -> int:
        return sum(1 for o in self.outcomes if o.action == action)


async def _existing(store: EventStore | None, story_id: str) -> list[EventEnvelope]:
    if store is None:
        return []
    return [stored.envelope async for stored in store.read(story_id)]


async def import_story(
    store: EventStore | None, story: LegacyStory, *, dry_run: bool = False, now: datetime | None = None
) -> StoryOutcome:
    """Import one legacy story (or, with ``dry_run``, say what importing it would do)."""
    plan = plan_genesis(story, now=now or utc_now())
    action, start, note = classify(plan, await _existing(store, story.story_id))
    outcome = StoryOutcome(story.story_id, action, note=note)
    if action not in (Action.IMPORT, Action.RESUME):
        return outcome
    outcome.problems.extend(plan.problems)
    if dry_run:
        outcome.events = len(plan.steps) - start
        return outcome
    if store is None:
        raise ValueError("importing needs an event store")
    moment = [utc_now()]  # set to each command's legacy time before it runs
    runtime = StoryRuntime(story.story_id, store, clock=lambda: moment[0])
    for n in range(start, len(plan.steps)):
        step = plan.steps[n]
        moment[0] = step.at
        request = CommandRequest(story.story_id, step.command, plan.command_id(n), step.actor)
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                result = await runtime.execute(request)
            except ConcurrencyConflict:
                # Live commands keep winning the race; the runtime has caught up, and the same
                # command id cannot be applied twice, so trying again is safe.
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                # Jitter breaks the lockstep with a writer that keeps winning; the import can wait.
                await asyncio.sleep(random.uniform(0.5, 1.0) * min(CONFLICT_BACKOFF_MAX, 0.005 * 2**attempt))
                continue
            except StoryAlreadyExists:
                # Someone else created the story between our look at the log and our first append.
                outcome.action, outcome.note = Action.EXISTS, "created by another writer during the import"
                outcome.problems.clear()
                return outcome
            except (InvalidCommand, RuleViolation, StoryNotFound) as error:
                # Planned on the legacy state, but a live command changed the story first.
                outcome.problems.append(Problem(story.story_id, step.node, f"not imported: {error.message}"))
                break
            if not result.duplicate:
                outcome.events += len(result.event_ids)
            break
    return outcome


async def import_legacy(
    reader: LegacyReader,
    store: EventStore | None,
    *,
    story_prefix: str = "",
    since: datetime | None = None,
    dry_run: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import every selected legacy story; ``store`` None means the log does not exist yet (dry run only).

    Stories are read a page at a time and imported ``concurrency`` at a time. Backend failures
    (BackendUnavailable, AppendOutcomeUnknown) stop the run; running it again resumes it.
    """
    if story_prefix:
        rules.check_id(story_prefix, "story_prefix")
    if not dry_run and store is None:
        raise ValueError("importing needs an event store")
    listing = await reader.list_stories(story_prefix=story_prefix, since=since)
    report = ImportReport(dry_run=dry_run, listing_problems=listing.problems)
    limit = asyncio.Semaphore(concurrency)
    now = datetime.now(UTC)

    async def one(story: LegacyStory) -> StoryOutcome:
        async with limit:
            return await import_story(store, story, dry_run=dry_run, now=now)

    async for page in reader.pages(listing.story_ids, page_size):
        # Let the page's other stories finish before reporting a failure: no story is left half-way
        # for a reason other than its own.
        results = await asyncio.gather(*(one(story) for story in page), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise failures[0]
        report.outcomes.extend(result for result in results if isinstance(result, StoryOutcome))
        if progress is not None:
            progress(len(report.outcomes), len(listing.story_ids))
    return report
