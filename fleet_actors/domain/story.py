"""The story aggregate's behaviour: ``decide`` (command -> events) and ``evolve`` (event -> state).

Both are pure and total. ``decide`` never raises for a rejected command: the rejection is a
value (:class:`Rejected`) carrying the typed error. New ids arrive in :class:`DecideContext`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import singledispatch

from fleet_actors.domain import rules
from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    ChangeDecisionStatus,
    Command,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordPlanVersion,
    RecordSummary,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.events import (
    ContextCreated,
    DecisionAdded,
    DecisionImpacted,
    DecisionRelated,
    DecisionStatusChanged,
    Event,
    EventEnvelope,
    MilestoneRecorded,
    PhaseTransitioned,
    PlanVersioned,
    SubtaskCreated,
    SubtaskUpdated,
    SummaryRecorded,
)
from fleet_actors.domain.phases import DEFAULT_PHASE_RULES, PhaseRules
from fleet_actors.domain.state import (
    SUBTASK_TRANSITIONS,
    Decision,
    DecisionRelation,
    Impact,
    Milestone,
    PhaseChange,
    RelationType,
    StoryState,
    Subtask,
    SubtaskStatus,
)
from fleet_actors.domain.validation import check_command, in_batch
from fleet_actors.errors import (
    InvalidCommand,
    RuleViolation,
    StoryAlreadyExists,
    StoryError,
    StoryNotFound,
)


@dataclass(frozen=True)
class DecideContext:
    """What the shell supplies to ``decide``: fresh ids for anything the command must name, and the
    configured phases (the shell reads them from the policy file; the domain never does)."""

    new_ids: tuple[str, ...] = ()
    phases: PhaseRules = dataclasses.field(default=DEFAULT_PHASE_RULES)


@dataclass(frozen=True)
class Accepted:
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Rejected:
    error: StoryError


DecisionResult = Accepted | Rejected

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ids_needed(command: Command) -> int:
    """How many fresh ids ``decide`` may consume for this command."""
    if isinstance(command, ApplyChanges):
        return sum(ids_needed(c) for c in command.commands)
    return 1 if isinstance(command, AddDecision | RecordMilestone) else 0


def may_create_story(command: Command) -> bool:
    """Whether ``command`` can be accepted for a story that does not exist yet."""
    if isinstance(command, ApplyChanges):
        return any(isinstance(c, CreateStory) for c in command.commands)
    return isinstance(command, CreateStory)


def decide(state: StoryState, command: Command, ctx: DecideContext = DecideContext()) -> DecisionResult:
    try:
        check_command(command)  # what needs no state first: the same checks the client runs before activating
        return Accepted(tuple(_decide(command, state, ctx)))
    except StoryError as error:
        return Rejected(error)


def evolve(state: StoryState, envelope: EventEnvelope) -> StoryState:
    """The state after one event (a new object; ``state`` is untouched)."""
    builder = StateBuilder(state)
    builder.add(envelope)
    return builder.state()


def fold(state: StoryState, envelopes: Iterable[EventEnvelope]) -> StoryState:
    builder = StateBuilder(state)
    for envelope in envelopes:
        builder.add(envelope)
    return builder.state()


class StateBuilder:
    """Applies events to a story in place, then freezes the result: the one place the changes that
    ``_evolve`` describes are carried out, for a single event (``evolve``) and for a run of them
    (``fold``, replay), which copies each collection it changes once per run, not once per event
    (per event, replaying a long history would be quadratic).

    The state it starts from, and every state it has handed out, are never modified: a collection
    is copied before its first change and handed over (frozen) by ``state()``.
    """

    def __init__(self, state: StoryState) -> None:
        self._working = state
        self._private = False  # whether _working is our own copy yet
        self._owned: set[str] = set()  # collections copied since the last state()

    @property
    def version(self) -> int:
        return self._working.version

    def add(self, envelope: EventEnvelope) -> None:
        if not self._private:
            self._working, self._private = _frozen(dict(self._working.__dict__)), True
        fields = self._working.__dict__
        for name, change in _evolve(envelope.payload, self._working, envelope).items():
            if isinstance(change, _Put | _Append):
                if name not in self._owned:
                    fields[name] = _mutable(name, fields[name])
                    self._owned.add(name)
                if isinstance(change, _Put):
                    fields[name][change.key] = change.value
                else:
                    fields[name].append(change.item)
            elif name in _COLLECTIONS:  # a whole new collection
                fields[name] = _mutable(name, change)
                self._owned.add(name)
            else:
                fields[name] = change
        fields["version"] = envelope.version
        fields["updated_at"] = envelope.timestamp

    def state(self) -> StoryState:
        if not self._private:
            return self._working
        fields = self._working.__dict__
        for name in self._owned:  # mappings are handed over as they are; the next change copies again
            if name not in _MAPPINGS:
                fields[name] = tuple(fields[name])
        self._owned.clear()
        self._private = False
        return self._working


def _mutable(name: str, collection: object) -> object:
    return dict(collection) if name in _MAPPINGS else list(collection)  # type: ignore[call-overload]


_MAPPINGS = ("subtasks", "decisions")
_COLLECTIONS = (*_MAPPINGS, "relations", "impacts", "milestones", "phase_history")


def _frozen(fields: dict[str, object]) -> StoryState:
    # dataclasses.replace re-runs __init__ over every field; replay folds thousands of events,
    # so fill the frozen instance's fields directly.
    new = object.__new__(StoryState)
    new.__dict__.update(fields)
    return new


@dataclass(frozen=True, slots=True)
class _Put:
    """A change to one entry of a mapping field (``subtasks``, ``decisions``)."""

    key: str
    value: object


@dataclass(frozen=True, slots=True)
class _Append:
    """One more item at the end of a tuple field (``relations``, ``milestones``, ...)."""

    item: object


# --- decide -------------------------------------------------------------------------------


@singledispatch
def _decide(command: Command, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    raise InvalidCommand(f"unknown command {type(command).__name__}")


def _require_story(state: StoryState) -> None:
    if not state.created:
        raise StoryNotFound(state.story_id)


def _take_id(ctx: DecideContext, given: str | None, field: str) -> tuple[str, DecideContext]:
    if given is not None:
        return rules.check_id(given, field), ctx
    if not ctx.new_ids:
        raise InvalidCommand(f"{field} was not given and no id was supplied to assign", field=field)
    return ctx.new_ids[0], replace(ctx, new_ids=ctx.new_ids[1:])


@_decide.register
def _(command: CreateStory, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    rules.check_id(state.story_id, "story_id")
    if state.created:
        raise StoryAlreadyExists(state.story_id)
    phase = ctx.phases.canonical(command.initial_phase or ctx.phases.initial, "initial_phase")
    return [
        ContextCreated(
            title=rules.check_title(command.title),
            description=rules.check_text(command.description, "description"),
            initial_phase=phase,
        )
    ]


@_decide.register
def _(command: CreateSubtask, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    subtask_id = rules.check_id(command.subtask_id, "subtask_id")
    title = rules.check_title(command.title)
    role = rules.check_label(command.role, "role")
    description = rules.check_text(command.description, "description")
    priority = rules.check_int(command.priority, "priority", rules.PRIORITY_RANGE)
    properties = rules.check_properties(command.properties)
    hours = rules.check_int(command.estimated_hours, "estimated_hours", range(rules.MAX_ESTIMATED_HOURS + 1))
    dependencies = rules.check_ids(command.dependencies, "dependencies", rules.MAX_DEPENDENCIES)
    if subtask_id in state.subtasks:
        raise RuleViolation(f"subtask {subtask_id!r} already exists in story {state.story_id!r}", field="subtask_id")
    if len(set(dependencies)) != len(dependencies):
        raise InvalidCommand("dependencies lists a subtask twice", field="dependencies")
    if subtask_id in dependencies:
        raise RuleViolation(f"subtask {subtask_id!r} cannot depend on itself", field="dependencies")
    missing = [d for d in dependencies if d not in state.subtasks]
    if missing:
        raise RuleViolation(f"dependencies point at unknown subtasks: {', '.join(missing)}", field="dependencies")
    # A new subtask has no dependants yet, so existing dependencies cannot close a cycle.
    return [
        SubtaskCreated(
            subtask_id=subtask_id,
            title=title,
            description=description,
            role=role,
            dependencies=dependencies,
            priority=priority,
            estimated_hours=hours,
            properties=properties,
        )
    ]


@_decide.register
def _(command: UpdateSubtask, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    subtask_id = rules.check_id(command.subtask_id, "subtask_id")
    status = rules.check_choice(command.status, "status", SubtaskStatus)
    note = rules.check_text(command.note, "note")
    properties = rules.check_properties(command.properties)
    subtask = state.subtasks.get(subtask_id)
    if subtask is None:
        raise RuleViolation(f"subtask {subtask_id!r} does not exist in story {state.story_id!r}", field="subtask_id")
    current = SubtaskStatus(subtask.status)
    if status == current and (note.strip() or properties):
        # Not a move: a note (or caller keys) recorded on the subtask as it stands, final or not.
        return [SubtaskUpdated(subtask_id=subtask_id, status=status.value, note=note, properties=properties)]
    if status not in SUBTASK_TRANSITIONS[current]:
        allowed = ", ".join(sorted(SUBTASK_TRANSITIONS[current])) or "nothing (final status)"
        raise RuleViolation(
            f"subtask {subtask_id!r} cannot move from {current} to {status}; allowed: {allowed}", field="status"
        )
    return [SubtaskUpdated(subtask_id=subtask_id, status=status.value, note=note, properties=properties)]


@_decide.register
def _(command: AddDecision, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    decision_id, ctx = _take_id(ctx, command.decision_id, "decision_id")
    if decision_id in state.decisions:
        raise RuleViolation(f"decision {decision_id!r} already exists in story {state.story_id!r}", field="decision_id")
    return [
        DecisionAdded(
            decision_id=decision_id,
            decision_type=rules.check_label(command.decision_type, "decision_type"),
            title=rules.check_title(command.title),
            rationale=rules.check_text(command.rationale, "rationale", required=True),
            alternatives=rules.check_alternatives(command.alternatives),
            decided_by=rules.check_text(command.decided_by, "decided_by", rules.MAX_SHORT),
            metadata=rules.check_metadata(command.metadata),
            properties=rules.check_properties(command.properties),
        )
    ]


@_decide.register
def _(command: ChangeDecisionStatus, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    decision_id = rules.check_id(command.decision_id, "decision_id")
    status = rules.check_label(command.status, "status")
    note = rules.check_text(command.note, "note")
    properties = rules.check_properties(command.properties)
    decision = state.decisions.get(decision_id)
    if decision is None:
        raise RuleViolation(f"decision {decision_id!r} does not exist in story {state.story_id!r}", field="decision_id")
    if decision.status == status and not note and not properties:
        raise RuleViolation(f"decision {decision_id!r} is already {status}", field="status")
    return [DecisionStatusChanged(decision_id=decision_id, status=status, note=note, properties=properties)]


@_decide.register
def _(command: RecordPlanVersion, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    plan_id = rules.check_text(command.plan_id, "plan_id", rules.MAX_SHORT, required=True).strip()
    version = rules.check_int(command.plan_version, "plan_version", range(1, 2**31))
    status = rules.check_label(command.status, "status") if command.status.strip() else ""
    return [
        PlanVersioned(
            plan_id=plan_id,
            plan_version=version,
            status=status,
            note=rules.check_text(command.note, "note"),
            properties=rules.check_properties(command.properties),
        )
    ]


@_decide.register
def _(command: RelateDecisions, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    src = rules.check_id(command.src_id, "src_id")
    dst = rules.check_id(command.dst_id, "dst_id")
    relation = rules.check_choice(command.relation_type, "relation_type", RelationType)
    for field, decision_id in (("src_id", src), ("dst_id", dst)):
        if decision_id not in state.decisions:
            raise RuleViolation(f"decision {decision_id!r} does not exist in story {state.story_id!r}", field=field)
    if src == dst:
        raise RuleViolation(f"decision {src!r} cannot relate to itself", field="dst_id")
    if any(r.src_id == src and r.dst_id == dst for r in state.relations):
        raise RuleViolation(f"decisions {src!r} and {dst!r} are already related", field="dst_id")
    if _reaches(_decision_edges(state.relations), dst, src):
        raise RuleViolation(f"relating {src!r} -> {dst!r} would form a cycle of decisions", field="dst_id")
    return [DecisionRelated(src_id=src, dst_id=dst, relation_type=relation.value)]


def _decision_edges(relations: Iterable[DecisionRelation]) -> dict[str, list[str]]:
    edges: dict[str, list[str]] = {}
    for r in relations:
        edges.setdefault(r.src_id, []).append(r.dst_id)
    return edges


def _reaches(edges: Mapping[str, list[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(edges.get(node, ()))
    return False


@_decide.register
def _(command: RecordImpact, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    decision_id = rules.check_id(command.decision_id, "decision_id")
    subtask_id = rules.check_id(command.subtask_id, "subtask_id")
    if decision_id not in state.decisions:
        raise RuleViolation(f"decision {decision_id!r} does not exist in story {state.story_id!r}", field="decision_id")
    if subtask_id not in state.subtasks:
        raise RuleViolation(f"subtask {subtask_id!r} does not exist in story {state.story_id!r}", field="subtask_id")
    if Impact(decision_id, subtask_id) in state.impacts:
        raise RuleViolation(f"decision {decision_id!r} already impacts subtask {subtask_id!r}", field="subtask_id")
    return [DecisionImpacted(decision_id=decision_id, subtask_id=subtask_id)]


@_decide.register
def _(command: TransitionPhase, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    target = ctx.phases.canonical(command.to_phase, "to_phase")
    rationale = rules.check_text(command.rationale, "rationale")
    current = state.phase
    if command.from_phase:
        expected = ctx.phases.canonical(command.from_phase, "from_phase")
        if expected != current:
            raise RuleViolation(f"story is in phase {current}, not {expected}", field="from_phase")
    ctx.phases.check_move(current, target, rationale)
    return [PhaseTransitioned(from_phase=current, to_phase=target, rationale=rationale)]


@_decide.register
def _(command: RecordMilestone, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    milestone_id, ctx = _take_id(ctx, command.milestone_id, "milestone_id")
    if any(m.milestone_id == milestone_id for m in state.milestones):
        raise RuleViolation(f"milestone {milestone_id!r} already recorded", field="milestone_id")
    return [
        MilestoneRecorded(
            milestone_id=milestone_id,
            kind=rules.check_label(command.kind, "kind"),
            description=rules.check_text(command.description, "description"),
            properties=rules.check_properties(command.properties),
        )
    ]


@_decide.register
def _(command: RecordSummary, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    _require_story(state)
    return [SummaryRecorded(summary=rules.check_text(command.summary, "summary", rules.MAX_SUMMARY, required=True))]


@_decide.register
def _(command: ApplyChanges, state: StoryState, ctx: DecideContext) -> Iterable[Event]:
    if not command.commands:
        raise InvalidCommand("the batch of changes is empty", field="changes")
    if len(command.commands) > rules.MAX_BATCH:
        raise InvalidCommand(f"at most {rules.MAX_BATCH} changes in one batch", field="changes")
    events: list[Event] = []
    scratch = state
    for index, sub in enumerate(command.commands):
        if isinstance(sub, ApplyChanges):
            raise InvalidCommand("batches cannot be nested", field="changes")
        need = ids_needed(sub)
        result = decide(scratch, sub, replace(ctx, new_ids=ctx.new_ids[:need]))
        ctx = replace(ctx, new_ids=ctx.new_ids[need:])
        if isinstance(result, Rejected):
            raise in_batch(result.error, index)
        for event in result.events:
            # Later changes in the batch must see the earlier ones (e.g. a subtask then its impact).
            scratch = evolve(
                scratch,
                EventEnvelope("", scratch.story_id, scratch.version + 1, scratch.updated_at or _EPOCH, event),
            )
            events.append(event)
    return events


# --- evolve -------------------------------------------------------------------------------
# Each rule returns the fields that change (collections as _Put/_Append, so a fold can apply them
# in place); ``evolve`` and ``StateBuilder`` add the version and time.

Changes = dict[str, object]


@singledispatch
def _evolve(event: Event, state: StoryState, envelope: EventEnvelope) -> Changes:
    # Total: an event this code has no rule for changes nothing but the version.
    return {}


@_evolve.register
def _(event: ContextCreated, state: StoryState, envelope: EventEnvelope) -> Changes:
    return {
        "created": True,
        "title": event.title,
        "description": event.description,
        "phase": event.initial_phase or "DESIGN",
        "created_at": envelope.timestamp,
        "created_by": envelope.actor,
    }


@_evolve.register
def _(event: PhaseTransitioned, state: StoryState, envelope: EventEnvelope) -> Changes:
    change = PhaseChange(event.from_phase, event.to_phase, event.rationale, envelope.timestamp, envelope.actor)
    return {"phase": event.to_phase, "phase_history": _Append(change)}


@_evolve.register
def _(event: SubtaskCreated, state: StoryState, envelope: EventEnvelope) -> Changes:
    subtask = Subtask(
        subtask_id=event.subtask_id,
        title=event.title,
        description=event.description,
        role=event.role,
        status=SubtaskStatus.PENDING.value,
        dependencies=tuple(event.dependencies),
        priority=event.priority,
        estimated_hours=event.estimated_hours,
        created_at=envelope.timestamp,
        updated_at=envelope.timestamp,
    )
    return {"subtasks": _Put(event.subtask_id, subtask)}


@_evolve.register
def _(event: SubtaskUpdated, state: StoryState, envelope: EventEnvelope) -> Changes:
    subtask = state.subtasks.get(event.subtask_id)
    if subtask is None:
        return {}
    # "" is an upcast v1 status nobody could map: the text is in the note, the status stays.
    updated = replace(subtask, status=event.status or subtask.status, updated_at=envelope.timestamp)
    return {"subtasks": _Put(event.subtask_id, updated)}


@_evolve.register
def _(event: DecisionAdded, state: StoryState, envelope: EventEnvelope) -> Changes:
    decision = Decision(
        decision_id=event.decision_id,
        decision_type=event.decision_type,
        title=event.title,
        rationale=event.rationale,
        alternatives=event.alternatives,
        decided_by=event.decided_by or envelope.actor,
        decided_at=envelope.timestamp,
        metadata=dict(event.metadata),
    )
    return {"decisions": _Put(event.decision_id, decision)}


@_evolve.register
def _(event: DecisionRelated, state: StoryState, envelope: EventEnvelope) -> Changes:
    changes: Changes = {"relations": _Append(DecisionRelation(event.src_id, event.dst_id, event.relation_type))}
    superseded = state.decisions.get(event.dst_id)
    if event.relation_type == RelationType.SUPERSEDES and superseded is not None:
        changes["decisions"] = _Put(event.dst_id, replace(superseded, status="SUPERSEDED"))
    return changes


@_evolve.register
def _(event: DecisionImpacted, state: StoryState, envelope: EventEnvelope) -> Changes:
    return {"impacts": _Append(Impact(event.decision_id, event.subtask_id))}


@_evolve.register
def _(event: MilestoneRecorded, state: StoryState, envelope: EventEnvelope) -> Changes:
    milestone = Milestone(event.milestone_id, event.kind, event.description, envelope.timestamp, envelope.actor)
    return {"milestones": _Append(milestone)}


@_evolve.register
def _(event: SummaryRecorded, state: StoryState, envelope: EventEnvelope) -> Changes:
    return {"last_summary": event.summary}


@_evolve.register
def _(event: DecisionStatusChanged, state: StoryState, envelope: EventEnvelope) -> Changes:
    decision = state.decisions.get(event.decision_id)
    if decision is None:
        return {}
    return {"decisions": _Put(event.decision_id, replace(decision, status=event.status))}


@_evolve.register
def _(event: PlanVersioned, state: StoryState, envelope: EventEnvelope) -> Changes:
    return {"plan_id": event.plan_id, "plan_version": event.plan_version, "plan_status": event.status}
