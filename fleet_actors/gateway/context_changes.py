"""UpdateContext's changes as domain commands: pure translation, with errors naming the request field.

Each supported (entity_type, operation) pair has a converter and a payload schema in
:data:`CHANGE_KINDS`; the prompt's tools block (:data:`TOOLS_TEXT`) is generated from the same
table, so what agents are told and what the gateway accepts cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet_actors.domain.alternatives import alternatives_from
from fleet_actors.domain.commands import (
    AddDecision,
    Command,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordSummary,
    RelateDecisions,
    UpdateSubtask,
)
from fleet_actors.errors import InvalidCommand, RuleViolation, StoryError
from fleet_actors.proto import context_service_pb2 as pb


@dataclass(frozen=True)
class ChangeCommand:
    """One ContextChange as a command, remembering where each of its fields came from."""

    index: int
    command: Command
    #: command fields filled from ``entity_id`` (the rest come from the payload)
    id_fields: frozenset[str]

    def wire_field(self, field: str) -> str:
        """The request field a command field came from, e.g. ``title`` -> ``changes[1].payload.title``."""
        if field in self.id_fields:
            return f"changes[{self.index}].entity_id"
        return f"changes[{self.index}].payload.{field}"


@dataclass(frozen=True)
class _ChangeInput:
    index: int
    entity_id: str
    payload: dict[str, Any]
    reason: str
    role: str
    task_id: str


def _decision_create(c: _ChangeInput) -> ChangeCommand:
    p = c.payload
    command = AddDecision(
        title=p.get("title", ""),
        rationale=p.get("rationale", c.reason),
        decision_type=p.get("decision_type", "ARCHITECTURE"),
        decision_id=c.entity_id or None,
        alternatives=alternatives_from(p.get("alternatives", "")),  # free text, as agents write it
        decided_by=p.get("decided_by", c.role),
        metadata=p.get("metadata", {}),
    )
    return ChangeCommand(c.index, command, frozenset({"decision_id"}))


def _decision_update(c: _ChangeInput) -> ChangeCommand:
    p = c.payload
    if ("dst_id" in p) == ("subtask_id" in p):
        raise InvalidCommand(
            "a DECISION UPDATE gives either relation_type and dst_id (relate two decisions) "
            "or subtask_id (the decision impacts that subtask)",
            field=f"changes[{c.index}].payload",
        )
    if "subtask_id" in p:
        return ChangeCommand(c.index, RecordImpact(c.entity_id, p["subtask_id"]), frozenset({"decision_id"}))
    command = RelateDecisions(c.entity_id, p["dst_id"], p.get("relation_type", ""))
    return ChangeCommand(c.index, command, frozenset({"src_id"}))


def _subtask_create(c: _ChangeInput) -> ChangeCommand:
    p = c.payload
    command = CreateSubtask(
        subtask_id=c.entity_id,
        title=p.get("title", ""),
        role=p.get("role", c.role),
        description=p.get("description", ""),
        dependencies=tuple(p.get("dependencies", ())),
        priority=p.get("priority", 3),
        estimated_hours=p.get("estimated_hours", 0),
    )
    return ChangeCommand(c.index, command, frozenset({"subtask_id"}))


def _subtask_update(c: _ChangeInput) -> ChangeCommand:
    p = c.payload
    command = UpdateSubtask(c.entity_id or c.task_id, p.get("status", ""), p.get("note", c.reason))
    return ChangeCommand(c.index, command, frozenset({"subtask_id"}))


def _milestone_create(c: _ChangeInput) -> ChangeCommand:
    p = c.payload
    command = RecordMilestone(p.get("kind", ""), p.get("description", c.reason), c.entity_id or None)
    return ChangeCommand(c.index, command, frozenset({"milestone_id"}))


def _summary(c: _ChangeInput) -> ChangeCommand:
    return ChangeCommand(c.index, RecordSummary(c.payload.get("summary", "")), frozenset())


@dataclass(frozen=True)
class _ChangeKind:
    convert: Callable[[_ChangeInput], ChangeCommand]
    #: payload key -> its JSON type: str, int, list (of strings) or dict (string -> string)
    payload: Mapping[str, type]


_DECISION_CREATE = _ChangeKind(
    _decision_create,
    {"title": str, "rationale": str, "decision_type": str, "alternatives": str, "decided_by": str, "metadata": dict},
)
_SUMMARY = _ChangeKind(_summary, {"summary": str})
#: the (entity_type, operation) pairs UpdateContext supports
CHANGE_KINDS: Mapping[tuple[str, str], _ChangeKind] = {
    ("DECISION", "CREATE"): _DECISION_CREATE,
    ("DECISION", "UPDATE"): _ChangeKind(_decision_update, {"relation_type": str, "dst_id": str, "subtask_id": str}),
    ("SUBTASK", "CREATE"): _ChangeKind(
        _subtask_create,
        {"title": str, "role": str, "description": str, "dependencies": list, "priority": int, "estimated_hours": int},
    ),
    ("SUBTASK", "UPDATE"): _ChangeKind(_subtask_update, {"status": str, "note": str}),
    ("MILESTONE", "CREATE"): _ChangeKind(_milestone_create, {"kind": str, "description": str}),
    ("SUMMARY", "CREATE"): _SUMMARY,
    ("SUMMARY", "UPDATE"): _SUMMARY,
}
_ENTITY_TYPES = sorted({entity for entity, _ in CHANGE_KINDS})
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of strings", dict: "an object of strings"}

#: the tools block of every prompt: how to record work, generated from the table above
TOOLS_TEXT = "\n".join(
    [
        "Record your work with UpdateContext: a list of changes applied all or nothing.",
        "Each change: operation, entity_type, entity_id, payload (a JSON object), reason.",
        *(f"- {entity} {op}: payload keys {', '.join(kind.payload)}" for (entity, op), kind in CHANGE_KINDS.items()),
    ]
)


def change_to_command(index: int, change: pb.ContextChange, role: str, task_id: str) -> ChangeCommand:
    """Translate ``changes[index]`` of an UpdateContext request (case-insensitive type and operation).

    Args:
        index: the change's position in the request (used in error fields).
        change: the change as received.
        role: the acting role: the default ``role`` of a new subtask and ``decided_by`` of a decision.
        task_id: the request's task: the default subject of a SUBTASK UPDATE.

    Returns:
        The domain command, with where its fields came from.

    Raises:
        InvalidCommand: an unsupported entity type or operation, a payload that is not a JSON
            object, or an unknown or mistyped payload key; the field is e.g. ``changes[2].payload.title``.
    """
    where = f"changes[{index}]"
    entity = change.entity_type.strip().upper()
    operation = change.operation.strip().upper()
    if entity not in _ENTITY_TYPES:
        raise InvalidCommand(
            f"unsupported entity_type {change.entity_type!r}; supported: {', '.join(_ENTITY_TYPES)}",
            field=f"{where}.entity_type",
        )
    kind = CHANGE_KINDS.get((entity, operation))
    if kind is None:
        supported = ", ".join(op for (e, op) in CHANGE_KINDS if e == entity)
        raise InvalidCommand(
            f"operation {change.operation!r} is not supported for {entity}; supported: {supported}",
            field=f"{where}.operation",
        )
    payload = _parse_payload(change.payload, kind.payload, f"{where}.payload")
    return kind.convert(_ChangeInput(index, change.entity_id, payload, change.reason, role, task_id))


def _parse_payload(text: str, schema: Mapping[str, type], field: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidCommand(f"not valid JSON: {error.msg} at character {error.pos}", field=field) from None
    except RecursionError:
        raise InvalidCommand("nested too deeply to be a change's payload", field=field) from None
    if not isinstance(data, dict):
        raise InvalidCommand("must be a JSON object", field=field)
    for key, value in data.items():
        kind = schema.get(key)
        if kind is None:
            raise InvalidCommand(f"unknown key {key!r}; allowed: {', '.join(schema)}", field=f"{field}.{key}")
        if not _has_type(value, kind):
            raise InvalidCommand(f"must be {_TYPE_NAMES[kind]}", field=f"{field}.{key}")
    return data


def _has_type(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is dict:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return isinstance(value, kind)


def locate_change_error(error: StoryError, changes: Sequence[ChangeCommand]) -> StoryError:
    """Point a rejected change's error at the request field it came from (e.g. changes[1].payload.title).

    The domain marks an error from inside a batch with the entry's ``change_index`` and the field of
    that entry's command."""
    index = error.change_index
    if index is None or not 0 <= index < len(changes) or not isinstance(error, InvalidCommand | RuleViolation):
        return error
    if error.field not in (None, "story_id"):
        error.field = changes[index].wire_field(error.field)
    return error
