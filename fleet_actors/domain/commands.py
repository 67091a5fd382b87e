"""Commands: what a caller asks the story to do. Validated by :func:`story.decide`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleet_actors.domain.events import Alternative


@dataclass(frozen=True)
class Command:
    pass


@dataclass(frozen=True)
class CreateStory(Command):
    title: str
    description: str = ""
    initial_phase: str = "DESIGN"


@dataclass(frozen=True)
class CreateSubtask(Command):
    subtask_id: str
    title: str
    role: str
    description: str = ""
    dependencies: tuple[str, ...] = ()
    priority: int = 3
    estimated_hours: int = 0
    #: caller keys without a field of their own, kept on the event
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateSubtask(Command):
    subtask_id: str
    status: str
    note: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AddDecision(Command):
    title: str
    rationale: str
    decision_type: str = "ARCHITECTURE"
    #: None: the caller lets the story assign one (taken from DecideContext.new_ids)
    decision_id: str | None = None
    alternatives: tuple[Alternative, ...] = ()
    decided_by: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeDecisionStatus(Command):
    decision_id: str
    status: str
    note: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordPlanVersion(Command):
    plan_id: str
    plan_version: int
    status: str = ""
    note: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RelateDecisions(Command):
    src_id: str
    dst_id: str
    relation_type: str


@dataclass(frozen=True)
class RecordImpact(Command):
    decision_id: str
    subtask_id: str


@dataclass(frozen=True)
class TransitionPhase(Command):
    to_phase: str
    rationale: str = ""
    #: if given, the story must currently be in this phase
    from_phase: str | None = None


@dataclass(frozen=True)
class RecordMilestone(Command):
    kind: str
    description: str = ""
    milestone_id: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordSummary(Command):
    summary: str


@dataclass(frozen=True)
class ApplyChanges(Command):
    """Several commands decided and appended together: all of them or none."""

    commands: tuple[Command, ...]
