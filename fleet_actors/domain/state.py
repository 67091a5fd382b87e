"""The in-memory state of one story, rebuilt by folding its events with :func:`story.evolve`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from fleet_actors.domain.events import Alternative


class Phase(StrEnum):
    DESIGN = "DESIGN"
    BUILD = "BUILD"
    TEST = "TEST"
    DOCS = "DOCS"


PHASE_ORDER: tuple[Phase, ...] = (Phase.DESIGN, Phase.BUILD, Phase.TEST, Phase.DOCS)


class SubtaskStatus(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    BLOCKED = "BLOCKED"
    DONE = "DONE"
    CANCELLED = "CANCELLED"


#: the subtask state machine: status -> statuses it may move to
SUBTASK_TRANSITIONS: Mapping[SubtaskStatus, frozenset[SubtaskStatus]] = MappingProxyType(
    {
        SubtaskStatus.PENDING: frozenset({SubtaskStatus.IN_PROGRESS, SubtaskStatus.BLOCKED, SubtaskStatus.CANCELLED}),
        SubtaskStatus.IN_PROGRESS: frozenset(
            {SubtaskStatus.DONE, SubtaskStatus.BLOCKED, SubtaskStatus.PENDING, SubtaskStatus.CANCELLED}
        ),
        SubtaskStatus.BLOCKED: frozenset({SubtaskStatus.IN_PROGRESS, SubtaskStatus.PENDING, SubtaskStatus.CANCELLED}),
        SubtaskStatus.DONE: frozenset(),
        SubtaskStatus.CANCELLED: frozenset(),
    }
)


class RelationType(StrEnum):
    DEPENDS_ON = "DEPENDS_ON"
    SUPERSEDES = "SUPERSEDES"


@dataclass(frozen=True)
class Subtask:
    subtask_id: str
    title: str
    description: str
    role: str
    status: str
    dependencies: tuple[str, ...]
    priority: int
    estimated_hours: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Decision:
    decision_id: str
    decision_type: str
    title: str
    rationale: str
    alternatives: tuple[Alternative, ...]
    decided_by: str
    decided_at: datetime
    metadata: Mapping[str, str]
    status: str = "ACCEPTED"  # SUPERSEDED once another decision supersedes it


@dataclass(frozen=True)
class DecisionRelation:
    src_id: str
    dst_id: str
    relation_type: str


@dataclass(frozen=True)
class Impact:
    decision_id: str
    subtask_id: str


@dataclass(frozen=True)
class Milestone:
    milestone_id: str
    kind: str
    description: str
    at: datetime
    actor: str


@dataclass(frozen=True)
class PhaseChange:
    from_phase: str
    to_phase: str
    rationale: str
    at: datetime
    actor: str


@dataclass(frozen=True)
class StoryState:
    story_id: str
    version: int = 0
    created: bool = False
    title: str = ""
    description: str = ""
    phase: str = ""
    created_at: datetime | None = None
    created_by: str = ""
    updated_at: datetime | None = None
    subtasks: Mapping[str, Subtask] = field(default_factory=dict)
    decisions: Mapping[str, Decision] = field(default_factory=dict)
    relations: tuple[DecisionRelation, ...] = ()
    impacts: tuple[Impact, ...] = ()
    milestones: tuple[Milestone, ...] = ()
    phase_history: tuple[PhaseChange, ...] = ()
    last_summary: str = ""
    #: the latest PlanVersioned; empty/0 until one is recorded (the subtasks are then the plan)
    plan_id: str = ""
    plan_version: int = 0
    plan_status: str = ""

    @property
    def status(self) -> str:
        """DONE once every subtask is finished and the story reached DOCS; else ACTIVE."""
        if not self.created:
            return ""
        finished = all(s.status in (SubtaskStatus.DONE, SubtaskStatus.CANCELLED) for s in self.subtasks.values())
        return "DONE" if self.phase == Phase.DOCS and self.subtasks and finished else "ACTIVE"
