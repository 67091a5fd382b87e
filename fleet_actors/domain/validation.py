"""What can be judged of a command on its own, without the story's state: ids, types, sizes, choices.

``decide`` runs these checks first, and the client runs them before it activates a story actor, so
a malformed command never costs a worker process (nor counts against the live cap). Pure: raises
:class:`~fleet_actors.errors.InvalidCommand` naming the field.
"""

from __future__ import annotations

from functools import singledispatch
from typing import TypeVar

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
from fleet_actors.domain.phases import PhaseRules
from fleet_actors.domain.state import RelationType, SubtaskStatus
from fleet_actors.errors import InvalidCommand, StoryError

E = TypeVar("E", bound=StoryError)


@singledispatch
def check_command(command: object) -> None:
    """Raise InvalidCommand if ``command`` is malformed whatever the story's state."""
    raise InvalidCommand(f"unknown command {type(command).__name__}", field="command")


@check_command.register
def _(command: CreateStory) -> None:
    rules.check_title(command.title)
    rules.check_text(command.description, "description")
    if command.initial_phase:  # which phases exist is configuration: decide checks it against ctx.phases
        rules.check_label(command.initial_phase, "initial_phase")


@check_command.register
def _(command: CreateSubtask) -> None:
    rules.check_id(command.subtask_id, "subtask_id")
    rules.check_title(command.title)
    rules.check_label(command.role, "role")
    rules.check_text(command.description, "description")
    rules.check_int(command.priority, "priority", rules.PRIORITY_RANGE)
    rules.check_int(command.estimated_hours, "estimated_hours", range(rules.MAX_ESTIMATED_HOURS + 1))
    rules.check_ids(command.dependencies, "dependencies", rules.MAX_DEPENDENCIES)


@check_command.register
def _(command: UpdateSubtask) -> None:
    rules.check_id(command.subtask_id, "subtask_id")
    rules.check_choice(command.status, "status", SubtaskStatus)
    rules.check_text(command.note, "note")


@check_command.register
def _(command: AddDecision) -> None:
    if command.decision_id is not None:
        rules.check_id(command.decision_id, "decision_id")
    rules.check_label(command.decision_type, "decision_type")
    rules.check_title(command.title)
    rules.check_text(command.rationale, "rationale", required=True)
    rules.check_alternatives(command.alternatives)
    rules.check_text(command.decided_by, "decided_by", rules.MAX_SHORT)
    rules.check_metadata(command.metadata)


@check_command.register
def _(command: RelateDecisions) -> None:
    rules.check_id(command.src_id, "src_id")
    rules.check_id(command.dst_id, "dst_id")
    rules.check_choice(command.relation_type, "relation_type", RelationType)


@check_command.register
def _(command: RecordImpact) -> None:
    rules.check_id(command.decision_id, "decision_id")
    rules.check_id(command.subtask_id, "subtask_id")


@check_command.register
def _(command: TransitionPhase) -> None:
    rules.check_label(command.to_phase, "to_phase")  # the phase set is configuration: decide checks it
    rules.check_text(command.rationale, "rationale")
    if command.from_phase:
        rules.check_label(command.from_phase, "from_phase")


@check_command.register
def _(command: RecordMilestone) -> None:
    if command.milestone_id is not None:
        rules.check_id(command.milestone_id, "milestone_id")
    rules.check_label(command.kind, "kind")
    rules.check_text(command.description, "description")


@check_command.register
def _(command: RecordSummary) -> None:
    rules.check_text(command.summary, "summary", rules.MAX_SUMMARY, required=True)


@check_command.register
def _(command: ApplyChanges) -> None:
    if not isinstance(command.commands, tuple | list) or not command.commands:
        raise InvalidCommand("the batch of changes is empty", field="changes")
    if len(command.commands) > rules.MAX_BATCH:
        raise InvalidCommand(f"at most {rules.MAX_BATCH} changes in one batch", field="changes")
    for index, sub in enumerate(command.commands):
        if isinstance(sub, ApplyChanges):
            raise InvalidCommand("batches cannot be nested", field="changes")
        try:
            check_command(sub)
        except InvalidCommand as error:
            raise in_batch(error, index) from None


def in_batch(error: E, index: int) -> E:
    """The error of the change at ``index`` of a batch, marked as such (as ``decide`` marks rejections)."""
    error.message = f"change {index}: {error.message}"
    error.args = (error.message,)
    error.change_index = index
    return error


def check_request(
    command: Command, command_id: object, actor: object, expected_version: object, phases: PhaseRules | None = None
) -> None:
    """Everything of a request that can be judged without the story (its id is checked by the caller);
    with ``phases`` (the configured phase set), the phases it names too."""
    if command_id is not None:
        rules.check_id(command_id, "command_id")
    rules.check_actor(actor)
    rules.check_expected_version(expected_version)
    check_command(command)
    if phases is not None:
        check_phase_names(command, phases)


def check_phase_names(command: Command, phases: PhaseRules) -> None:
    """The phases a command names are phases of the configured set (moves between them need state)."""
    if isinstance(command, ApplyChanges):
        for index, sub in enumerate(command.commands):
            try:
                check_phase_names(sub, phases)
            except InvalidCommand as error:
                raise in_batch(error, index) from None
    elif isinstance(command, CreateStory) and command.initial_phase:
        phases.canonical(command.initial_phase, "initial_phase")
    elif isinstance(command, TransitionPhase):
        phases.canonical(command.to_phase, "to_phase")
        if command.from_phase:
            phases.canonical(command.from_phase, "from_phase")


@check_command.register
def _(command: ChangeDecisionStatus) -> None:
    rules.check_id(command.decision_id, "decision_id")
    rules.check_label(command.status, "status")
    rules.check_text(command.note, "note")
    rules.check_properties(command.properties)


@check_command.register
def _(command: RecordPlanVersion) -> None:
    rules.check_text(command.plan_id, "plan_id", rules.MAX_SHORT, required=True)
    rules.check_int(command.plan_version, "plan_version", range(1, 2**31))
    if command.status.strip():
        rules.check_label(command.status, "status")
    rules.check_text(command.note, "note")
    rules.check_properties(command.properties)
