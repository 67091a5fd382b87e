"""UpdateContext's changes as domain commands, the way the fleet's callers send them. Pure.

Callers of the Context Service send payloads in several shapes (docs/compatibility.md): synonyms
(``sub_id``, ``last_status``, ``event``), statuses in their own words (``COMPLETED``), keys we have
no field for (``plan_id``, a 10 kB ``data``), updates of subtasks not created yet. :func:`plan_changes`
maps each change onto commands against the story's current state, keeps every key it has no field
for as a property of the event, and says what it did differently in warnings. A change that cannot
be applied raises :class:`~fleet_actors.errors.InvalidCommand` naming ``changes[i]...`` when the
request is all-or-nothing, and is otherwise skipped with a warning naming ``changes[i]`` and why.
:func:`settle` then decides the batch with the pure domain and drops (or, all-or-nothing, reports)
the changes the story's rules reject, so what is sent to the story actor is accepted as one batch.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet_actors.codec.upcasters import v1_status
from fleet_actors.domain.alternatives import alternatives_from
from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    ChangeDecisionStatus,
    Command,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordPlanVersion,
    RecordSummary,
    RelateDecisions,
    UpdateSubtask,
)
from fleet_actors.domain.phases import DEFAULT_PHASE_RULES, PhaseRules
from fleet_actors.domain.state import SUBTASK_TRANSITIONS, StoryState, SubtaskStatus
from fleet_actors.domain.story import DecideContext, Rejected, decide, ids_needed
from fleet_actors.errors import InvalidCommand, RuleViolation, StoryError
from fleet_actors.proto import context_service_pb2 as pb


@dataclass(frozen=True)
class ChangeCommand:
    """One command planned for ``changes[index]``, remembering where its fields came from."""

    index: int
    command: Command
    #: command fields filled from ``entity_id`` (the rest come from the payload)
    id_fields: frozenset[str] = frozenset()
    #: command field -> the payload key it was read from, when that key had another name
    renamed: Mapping[str, str] = field(default_factory=dict)

    def wire_field(self, name: str) -> str:
        """The request field a command field came from, e.g. ``title`` -> ``changes[1].payload.title``."""
        if name in self.id_fields:
            return f"changes[{self.index}].entity_id"
        return f"changes[{self.index}].payload.{self.renamed.get(name, name)}"


@dataclass(frozen=True)
class Plan:
    """The commands to append as one batch, and what the caller should be told."""

    commands: tuple[ChangeCommand, ...]
    warnings: tuple[str, ...]


# --- payload keys ---------------------------------------------------------------------------

#: command field -> the payload keys callers use for it, first match wins
_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "title": ("title", "name"),
    "rationale": ("rationale", "reasoning", "content", "description"),
    "decision_type": ("decision_type", "type", "kind", "category"),
    "alternatives": ("alternatives", "alternatives_considered", "options"),
    "decided_by": ("decided_by", "author", "winner", "by"),
    "metadata": ("metadata",),
    "decision_status": ("status", "decision_status", "state"),
    "relation_type": ("relation_type", "relation"),
    "dst_id": ("dst_id", "target_id", "depends_on", "supersedes"),
    "impacts": ("subtask_id", "impacts", "task_id"),
    "subtask_id": ("sub_id", "subtask_id", "task_id", "id"),
    "role": ("role", "assignee_role", "assigned_role"),
    "description": ("description", "details"),
    "dependencies": ("dependencies", "depends_on", "deps"),
    "priority": ("priority",),
    "estimated_hours": ("estimated_hours", "hours", "estimate"),
    "status": ("status", "last_status", "new_status", "state"),
    "note": ("note", "notes", "comment", "message"),
    "kind": ("kind", "event", "event_type", "type", "milestone"),
    "milestone_description": ("description", "title", "details", "message"),
    "summary": ("summary", "content", "text"),
    "plan_id": ("plan_id", "id"),
    "plan_version": ("version", "plan_version"),
    "plan_status": ("status", "plan_status", "state"),
}

_ENTITY_KINDS = ("DECISION", "SUBTASK", "MILESTONE", "SUMMARY", "PLAN")
_SUBTASK_ALIASES = {"TASK": "SUBTASK", "SUB_TASK": "SUBTASK", "PLAN_VERSION": "PLAN", "NOTE": "SUMMARY"}
_OPERATIONS = {"CREATE": "CREATE", "ADD": "CREATE", "INSERT": "CREATE", "UPDATE": "UPDATE", "UPSERT": "UPDATE"}

#: the tools block of every prompt: how to record work
TOOLS_TEXT = "\n".join(
    [
        "Record your work with UpdateContext: a list of changes (operation, entity_type, entity_id, payload as a",
        "JSON object, reason). Changes that cannot be applied are skipped with a warning naming them.",
        "- DECISION CREATE: payload title, rationale, decision_type, alternatives, decided_by, metadata, status",
        "- DECISION UPDATE: payload status; or relation_type (DEPENDS_ON|SUPERSEDES) and dst_id; or subtask_id",
        "- SUBTASK CREATE: payload title, role, description, dependencies, priority (1-5), estimated_hours, status",
        "- SUBTASK UPDATE: payload status (PENDING, IN_PROGRESS, BLOCKED, DONE, CANCELLED), note",
        "- MILESTONE CREATE: payload kind, description",
        "- PLAN CREATE|UPDATE: payload plan_id, version, status",
        "- SUMMARY CREATE|UPDATE: payload summary",
        "Any other payload key is kept with the change as a property.",
    ]
)


class _Payload:
    """A change's payload: typed reads of known keys (under any synonym); the rest become properties."""

    def __init__(self, index: int, data: Mapping[str, Any]) -> None:
        self.index = index
        self.data = dict(data)
        self.used: set[str] = set()
        self.renamed: dict[str, str] = {}
        self.notes: list[str] = []

    def key(self, name: str) -> str | None:
        return next((k for k in _SYNONYMS.get(name, (name,)) if k in self.data and k not in self.used), None)

    def text(self, name: str, default: str = "") -> str:
        key = self.key(name)
        if key is None:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return default  # left for the properties
        self.used.add(key)
        if key != name:
            self.renamed[name] = key
        return str(value)

    def integer(self, name: str, default: int) -> int:
        key = self.key(name)
        if key is None:
            return default
        value = self.data[key]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            self.notes.append(f"payload.{key} is not an integer; kept as a property")
            return default
        self.used.add(key)
        if key != name:
            self.renamed[name] = key
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        key = self.key(name)
        if key is None:
            return ()
        value = self.data[key]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.notes.append(f"payload.{key} is not a list of strings; kept as a property")
            return ()
        self.used.add(key)
        if key != name:
            self.renamed[name] = key
        return tuple(value)

    def mapping(self, name: str) -> dict[str, str]:
        key = self.key(name)
        if key is None:
            return {}
        value = self.data[key]
        if not isinstance(value, dict):
            self.notes.append(f"payload.{key} is not an object; kept as a property")
            return {}
        self.used.add(key)
        return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in value.items()}

    def properties(self) -> dict[str, str]:
        """Every key not read into a field: strings as they are, other values as JSON."""
        return {
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in self.data.items()
            if k not in self.used
        }


# --- planning -------------------------------------------------------------------------------


@dataclass
class _Story:
    """What planning needs to know of the story as the batch so far leaves it."""

    subtasks: dict[str, str]  # id -> status
    decisions: dict[str, str]  # id -> status
    plan_version: int

    @classmethod
    def of(cls, state: StoryState) -> _Story:
        return cls(
            {k: s.status for k, s in state.subtasks.items()},
            {k: d.status for k, d in state.decisions.items()},
            state.plan_version,
        )


@dataclass(frozen=True)
class _Change:
    index: int
    entity: str
    operation: str
    entity_id: str
    payload: _Payload
    reason: str
    role: str
    task_id: str


def plan_changes(
    changes: Sequence[pb.ContextChange], state: StoryState, *, role: str, task_id: str, strict: bool
) -> Plan:
    """Map each change onto commands against ``state`` (and the changes before it).

    Args:
        changes: the request's changes, in order.
        state: the story as it is now (the commands are decided against it).
        role: the acting role: the default role of a new subtask and author of a decision.
        task_id: the request's task: the default subject of a SUBTASK UPDATE.
        strict: all-or-nothing: raise for a change that cannot be applied instead of skipping it.

    Raises:
        InvalidCommand: (strict only) a change that cannot be applied, naming ``changes[i]...``.
    """
    story = _Story.of(state)
    commands: list[ChangeCommand] = []
    warnings: list[str] = []
    for index, change in enumerate(changes):
        try:
            planned, notes = _plan_one(index, change, story, role, task_id)
        except InvalidCommand as error:
            if strict:
                raise
            warnings.append(_skipped(index, error))
            continue
        commands.extend(planned)
        warnings.extend(f"changes[{index}]: {note}" for note in notes)
    return Plan(tuple(commands), tuple(warnings))


def _skipped(index: int, error: StoryError) -> str:
    where = error.field if error.field and error.field.startswith(f"changes[{index}]") else f"changes[{index}]"
    message = re.sub(r"^change \d+: ", "", error.message)
    return f"{where} skipped: {message}"


def _plan_one(
    index: int, change: pb.ContextChange, story: _Story, role: str, task_id: str
) -> tuple[list[ChangeCommand], list[str]]:
    where = f"changes[{index}]"
    entity = re.sub(r"[\s-]+", "_", change.entity_type.strip().upper())
    entity = _SUBTASK_ALIASES.get(entity, entity)
    operation = change.operation.strip().upper()
    if not entity and not operation and not change.entity_id.strip() and not change.payload.strip():
        raise InvalidCommand("the change is empty (no operation, entity_type, entity_id or payload)", field=where)
    if entity not in _ENTITY_KINDS:
        raise InvalidCommand(
            f"entity_type {change.entity_type!r} is not one this service records; "
            f"supported: {', '.join(_ENTITY_KINDS)}",
            field=f"{where}.entity_type",
        )
    if operation == "DELETE":
        raise InvalidCommand(
            "DELETE is not supported: the story's history is append-only (record a status instead)",
            field=f"{where}.operation",
        )
    if operation not in _OPERATIONS:
        raise InvalidCommand(
            f"operation {change.operation!r} is not supported; supported: CREATE, UPDATE", field=f"{where}.operation"
        )
    payload = _Payload(index, _parse_payload(change.payload, f"{where}.payload"))
    c = _Change(index, entity, _OPERATIONS[operation], change.entity_id.strip(), payload, change.reason, role, task_id)
    planned, notes = _PLANNERS[entity](c, story)
    return planned, [*notes, *payload.notes]


def _parse_payload(text: str, where: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidCommand(f"not valid JSON: {error.msg} at character {error.pos}", field=where) from None
    except RecursionError:
        raise InvalidCommand("nested too deeply to be a change's payload", field=where) from None
    if not isinstance(data, dict):
        raise InvalidCommand("must be a JSON object", field=where)
    return data


def _command(c: _Change, command: Command, *id_fields: str) -> ChangeCommand:
    return ChangeCommand(c.index, command, frozenset(id_fields), dict(c.payload.renamed))


def _plan_decision(c: _Change, story: _Story) -> tuple[list[ChangeCommand], list[str]]:
    p = c.payload
    decision_id = c.entity_id or None
    status = p.text("decision_status").strip().upper()
    notes = []
    if c.operation == "CREATE" and (decision_id is None or decision_id not in story.decisions):
        title = p.text("title") or c.entity_id or "Untitled decision"
        rationale = p.text("rationale") or c.reason or title
        alternatives_key = p.key("alternatives")
        alternatives = p.data.get(alternatives_key) if alternatives_key else None
        if isinstance(alternatives, str | list) and all(isinstance(a, str) for a in alternatives):
            p.used.add(alternatives_key)  # type: ignore[arg-type]
        else:
            alternatives = None
        command = AddDecision(
            title=title,
            rationale=rationale,
            decision_type=_label(p.text("decision_type")) or "ARCHITECTURE",
            decision_id=decision_id,
            alternatives=alternatives_from(alternatives),
            decided_by=p.text("decided_by") or c.role,
            metadata=p.mapping("metadata"),
            properties=p.properties(),
        )
        planned = [_command(c, command, "decision_id")]
        if decision_id is not None:
            story.decisions[decision_id] = "ACCEPTED"
        if status and status != "ACCEPTED" and decision_id is not None:
            planned.append(_command(c, ChangeDecisionStatus(decision_id, status, c.reason), "decision_id"))
            story.decisions[decision_id] = status
        elif status and status != "ACCEPTED":
            notes.append(f"status {status} kept as a property: a decision without an entity_id has no id to update")
            planned[0] = _command(c, _with_property(command, "status", status), "decision_id")
        return planned, notes
    if decision_id is None:
        raise InvalidCommand("a DECISION UPDATE names its decision in entity_id", field=f"changes[{c.index}].entity_id")
    if c.operation == "CREATE":
        notes.append(f"decision {decision_id!r} exists already; recorded as an update")
    planned = []
    dst = p.text("dst_id")
    if dst:
        relation = p.text("relation_type") or ("SUPERSEDES" if p.renamed.get("dst_id") == "supersedes" else "")
        planned.append(_command(c, RelateDecisions(decision_id, dst, relation or "DEPENDS_ON"), "src_id"))
    impacted = p.text("impacts")
    if impacted:
        planned.append(_command(c, RecordImpact(decision_id, impacted), "decision_id"))
    properties = p.properties()
    if status or properties or not planned:
        if not status:
            status = story.decisions.get(decision_id, "ACCEPTED")
        planned.append(_command(c, ChangeDecisionStatus(decision_id, status, c.reason, properties), "decision_id"))
        story.decisions[decision_id] = status
    return planned, notes


def _with_property(command: AddDecision, key: str, value: str) -> AddDecision:
    return AddDecision(
        command.title,
        command.rationale,
        command.decision_type,
        command.decision_id,
        command.alternatives,
        command.decided_by,
        command.metadata,
        {**command.properties, key: value},
    )


def _label(text: str) -> str:
    """A caller's word as one of our labels: upper case, runs of other characters as '_'."""
    return re.sub(r"[^A-Z0-9_]+", "_", text.strip().upper()).strip("_")


def _status(text: str, where: str) -> SubtaskStatus:
    status = v1_status(text)  # the same vocabulary as the v1 upcaster: COMPLETED, WIP, finished, ...
    if not status:
        allowed = ", ".join(s.value for s in SubtaskStatus)
        raise InvalidCommand(f"status {text!r} means none of {allowed}", field=where)
    return SubtaskStatus(status)


def _path(current: SubtaskStatus, target: SubtaskStatus) -> list[SubtaskStatus] | None:
    """The shortest way through the subtask state machine (without ``current``), or None."""
    previous: dict[SubtaskStatus, SubtaskStatus] = {}
    queue = deque([current])
    while queue:
        node = queue.popleft()
        if node == target:
            path = [node]
            while path[-1] in previous and previous[path[-1]] != current:
                path.append(previous[path[-1]])
            return list(reversed(path))
        for nxt in sorted(SUBTASK_TRANSITIONS[node]):
            if nxt not in previous and nxt != current:
                previous[nxt] = node
                queue.append(nxt)
    return None


def _plan_subtask(c: _Change, story: _Story) -> tuple[list[ChangeCommand], list[str]]:
    p = c.payload
    where = f"changes[{c.index}]"
    subtask_id = c.entity_id or p.text("subtask_id") or (c.task_id if c.operation == "UPDATE" else "")
    id_field = "subtask_id" if c.entity_id else ""
    if not subtask_id:
        raise InvalidCommand("the change names no subtask (entity_id, payload.sub_id or task_id)", field=f"{where}")
    status_text = p.text("status")
    notes: list[str] = []
    planned: list[ChangeCommand] = []
    if subtask_id not in story.subtasks:
        if c.operation == "UPDATE":
            notes.append(f"subtask {subtask_id!r} did not exist; created it, then updated it")
        dependencies = p.strings("dependencies")
        pending = [d for d in dependencies if d not in story.subtasks]
        command = CreateSubtask(
            subtask_id=subtask_id,
            title=p.text("title") or subtask_id,
            role=_label(p.text("role")) or c.role,
            description=p.text("description"),
            dependencies=tuple(d for d in dependencies if d in story.subtasks),
            priority=p.integer("priority", 3),
            estimated_hours=p.integer("estimated_hours", 0),
        )
        if pending:
            notes.append(
                f"dependencies {', '.join(pending)} do not exist (yet); kept as the property pending_dependencies"
            )
        created = _command(c, command, *[f for f in (id_field,) if f])
        story.subtasks[subtask_id] = SubtaskStatus.PENDING.value
        planned.append(created)
        extra = {"pending_dependencies": json.dumps(pending)} if pending else {}
    else:
        if c.operation == "CREATE":
            notes.append(f"subtask {subtask_id!r} exists already; recorded as an update")
        extra = {}
    note = p.text("note") or c.reason
    current = SubtaskStatus(story.subtasks[subtask_id])
    target = current
    if status_text:
        target = _status(status_text, f"{where}.payload.{p.renamed.get('status', 'status')}")
    steps = _path(current, target) if target != current else []
    if steps is None:
        raise InvalidCommand(
            f"subtask {subtask_id!r} cannot move from {current.value} to {target.value} ({current.value} is final)",
            field=f"{where}.payload",
        )
    if len(steps) > 1:
        notes.append(
            f"subtask {subtask_id!r} moved {' -> '.join([current.value, *(s.value for s in steps)])} "
            "(the intermediate status is implied)"
        )
    for step in steps[:-1]:
        planned.append(_command(c, UpdateSubtask(subtask_id, step.value, f"implied by {target.value}"), id_field))
    properties = {**p.properties(), **extra}
    if steps:
        planned.append(_command(c, UpdateSubtask(subtask_id, target.value, note, properties), id_field))
        story.subtasks[subtask_id] = target.value
    elif planned:  # just created, nothing to move: the keys go on the creation
        planned[0] = _attach(planned[0], properties)
    elif note.strip() or properties:
        # No move: the note and keys are recorded on the subtask as it stands.
        planned.append(_command(c, UpdateSubtask(subtask_id, current.value, note, properties), id_field))
    else:
        raise InvalidCommand(
            f"subtask {subtask_id!r} is already {current.value} and the change carries nothing else to record",
            field=f"{where}.payload",
        )
    return planned, notes


def _attach(planned: ChangeCommand, properties: Mapping[str, str]) -> ChangeCommand:
    command = planned.command
    assert isinstance(command, CreateSubtask)
    updated = CreateSubtask(
        command.subtask_id,
        command.title,
        command.role,
        command.description,
        command.dependencies,
        command.priority,
        command.estimated_hours,
        {**command.properties, **properties},
    )
    return ChangeCommand(planned.index, updated, planned.id_fields, planned.renamed)


def _plan_milestone(c: _Change, story: _Story) -> tuple[list[ChangeCommand], list[str]]:
    p = c.payload
    if c.operation != "CREATE":
        raise InvalidCommand(
            "a milestone is recorded once (CREATE); it has nothing to update", field=f"changes[{c.index}].operation"
        )
    kind = _label(p.text("kind"))
    description = p.text("milestone_description") or c.reason
    if not kind:
        kind = "MILESTONE"
    command = RecordMilestone(kind, description, c.entity_id or None, p.properties())
    return [_command(c, command, "milestone_id")], []


def _plan_summary(c: _Change, story: _Story) -> tuple[list[ChangeCommand], list[str]]:
    p = c.payload
    summary = p.text("summary") or c.reason
    properties = p.properties()
    notes = []
    if properties:
        # A summary event is text only: the other keys follow it as JSON rather than being dropped.
        summary = "\n".join(filter(None, [summary, json.dumps(properties, sort_keys=True)]))
        notes.append(f"keys {', '.join(properties)} appended to the summary as JSON")
    return [_command(c, RecordSummary(summary))], notes


def _plan_plan(c: _Change, story: _Story) -> tuple[list[ChangeCommand], list[str]]:
    p = c.payload
    plan_id = c.entity_id or p.text("plan_id") or "plan"
    version = p.integer("plan_version", 0) or story.plan_version + 1
    status = _label(p.text("plan_status"))
    command = RecordPlanVersion(plan_id, version, status, c.reason, p.properties())
    story.plan_version = version
    return [_command(c, command, *(["plan_id"] if c.entity_id else []))], []


_PLANNERS: Mapping[str, Callable[[_Change, _Story], tuple[list[ChangeCommand], list[str]]]] = {
    "DECISION": _plan_decision,
    "SUBTASK": _plan_subtask,
    "MILESTONE": _plan_milestone,
    "SUMMARY": _plan_summary,
    "PLAN": _plan_plan,
}


# --- settling against the story's rules -----------------------------------------------------


def settle(state: StoryState, plan: Plan, *, phases: PhaseRules = DEFAULT_PHASE_RULES, strict: bool) -> Plan:
    """Decide the planned batch against ``state`` with the pure domain; drop each change a rule
    rejects (all of its commands) with a warning, until the rest is accepted.

    Raises:
        StoryError: (strict only) the first rejection, pointing at the request field.
    """
    commands = list(plan.commands)
    warnings = list(plan.warnings)
    while commands:
        batch = ApplyChanges(tuple(c.command for c in commands))
        ids = tuple(f"planned-{i}" for i in range(ids_needed(batch)))
        result = decide(state, batch, DecideContext(ids, phases))
        if not isinstance(result, Rejected):
            break
        error = result.error
        if error.change_index is None or not 0 <= error.change_index < len(commands):
            raise error
        located = locate_change_error(error, commands)
        if strict:
            raise located
        index = commands[error.change_index].index
        warnings.append(_skipped(index, located))
        commands = [c for c in commands if c.index != index]
    return Plan(tuple(commands), tuple(warnings))


def locate_change_error(error: StoryError, changes: Sequence[ChangeCommand]) -> StoryError:
    """Point a rejected command's error at the request field it came from (e.g. changes[1].payload.title).

    The domain marks an error from inside a batch with the command's ``change_index`` (its position
    in the batch) and the field of that command; ``changes`` is the batch as planned."""
    index = error.change_index
    if index is None or not 0 <= index < len(changes) or not isinstance(error, InvalidCommand | RuleViolation):
        return error
    planned = changes[index]
    if error.field not in (None, "story_id"):
        error.field = planned.wire_field(error.field)
    error.message = re.sub(r"^change \d+: ", f"changes[{planned.index}]: ", error.message)
    error.args = (error.message,)
    return error
