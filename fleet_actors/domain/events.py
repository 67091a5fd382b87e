"""Every event type of the story aggregate, defined once.

Each is a frozen dataclass whose name and fields match the protobuf message of the same name
in ``protos/fleet/context/v1/events.proto``; the codec maps between the two mechanically.
``event_type`` (snake_case) is the name of the envelope's oneof field and the last token of
the NATS subject; ``schema_version`` is the current shape of the payload.

They are slotted (``slots=True``): an instance is one allocation with its fields at fixed places,
and has no ``__dict__``. Every read builds thousands of them; the compiled decoder fills those
places directly, which halved decoding (docs/benchmarks.md, "Slotted events").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1


EVENT_TYPES: dict[str, type[Event]] = {}


@dataclass(frozen=True, slots=True)
class Alternative:
    """An option that was considered for a decision and not chosen, and why."""

    title: str
    reason: str = ""


#: value types nested inside events, by their protobuf message name (for the mechanical mapping)
VALUE_TYPES: dict[str, type] = {"Alternative": Alternative}


def _register(cls: type[Event]) -> type[Event]:
    EVENT_TYPES[cls.event_type] = cls
    return cls


@_register
@dataclass(frozen=True, slots=True)
class ContextCreated(Event):
    event_type: ClassVar[str] = "context_created"
    title: str
    description: str = ""
    initial_phase: str = "DESIGN"


@_register
@dataclass(frozen=True, slots=True)
class PhaseTransitioned(Event):
    event_type: ClassVar[str] = "phase_transitioned"
    from_phase: str
    to_phase: str
    rationale: str = ""


@_register
@dataclass(frozen=True, slots=True)
class SubtaskCreated(Event):
    event_type: ClassVar[str] = "subtask_created"
    subtask_id: str
    title: str
    description: str = ""
    role: str = ""
    dependencies: tuple[str, ...] = ()
    priority: int = 3
    estimated_hours: int = 0
    #: caller keys without a field of their own (UpdateContext payloads), kept as given
    properties: Mapping[str, str] = field(default_factory=dict)


@_register
@dataclass(frozen=True, slots=True)
class SubtaskUpdated(Event):
    """v2: ``status`` is a SubtaskStatus value; "" marks an unrecognised v1 status (no change)."""

    event_type: ClassVar[str] = "subtask_updated"
    schema_version: ClassVar[int] = 2
    subtask_id: str
    status: str
    note: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@_register
@dataclass(frozen=True, slots=True)
class DecisionAdded(Event):
    """v2: ``alternatives`` are structured (v1 kept one free-text string)."""

    event_type: ClassVar[str] = "decision_added"
    schema_version: ClassVar[int] = 2
    decision_id: str
    decision_type: str
    title: str
    rationale: str
    alternatives: tuple[Alternative, ...] = ()
    decided_by: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)


@_register
@dataclass(frozen=True, slots=True)
class DecisionRelated(Event):
    event_type: ClassVar[str] = "decision_related"
    src_id: str
    dst_id: str
    relation_type: str


@_register
@dataclass(frozen=True, slots=True)
class DecisionImpacted(Event):
    event_type: ClassVar[str] = "decision_impacted"
    decision_id: str
    subtask_id: str


@_register
@dataclass(frozen=True, slots=True)
class MilestoneRecorded(Event):
    event_type: ClassVar[str] = "milestone_recorded"
    milestone_id: str
    kind: str
    description: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@_register
@dataclass(frozen=True, slots=True)
class SummaryRecorded(Event):
    event_type: ClassVar[str] = "summary_recorded"
    summary: str


@_register
@dataclass(frozen=True, slots=True)
class DecisionStatusChanged(Event):
    """A decision's status as its callers name it (PROPOSED, ACCEPTED, RESOLVED, ...)."""

    event_type: ClassVar[str] = "decision_status_changed"
    decision_id: str
    status: str
    note: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@_register
@dataclass(frozen=True, slots=True)
class PlanVersioned(Event):
    """A new version of the story's plan, numbered by the planning side."""

    event_type: ClassVar[str] = "plan_versioned"
    plan_id: str
    plan_version: int
    status: str = ""
    note: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """A payload with the metadata every stored event carries."""

    event_id: str
    story_id: str
    version: int
    timestamp: datetime
    payload: Event
    command_id: str = ""
    actor: str = ""
    #: the payload's shape as stored; 0 (the default) means the current shape of its type
    schema_version: int = 0
    #: payload fields whose text was redacted before the event was appended (e.g. ``summary``)
    redacted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.schema_version:
            object.__setattr__(self, "schema_version", self.payload.schema_version)

    @property
    def event_type(self) -> str:
        return self.payload.event_type


def _refuse_pickles_with_a_dict(cls: type) -> None:
    """A slotted frozen dataclass unpickles from its field values (as ``dataclasses`` pickles it,
    and as the story actor's messages carry it). A pickle of an earlier release, whose events had a
    ``__dict__``, brings that dict instead, which the generic ``__setstate__`` would read silently
    as the values (every field set to a field's name): refused, so that the reader says which
    release mismatch it met (application/messages.py: IncompatibleRelease)."""
    setstate = getattr(cls, "__setstate__")  # noqa: B009 - written by dataclass(), unknown to the type checker

    def __setstate__(self: object, state: object) -> None:
        if isinstance(state, dict):
            raise TypeError(f"a {cls.__name__} pickled by another release of fleet-actors (with a __dict__)")
        setstate(self, state)

    setattr(cls, "__setstate__", __setstate__)  # noqa: B010 - replaces the one dataclass() wrote


#: every slotted value of this module: the envelope, the values nested in events, and the events
SLOTTED_TYPES: tuple[type, ...] = (EventEnvelope, *VALUE_TYPES.values(), *EVENT_TYPES.values())

for _cls in SLOTTED_TYPES:
    _refuse_pickles_with_a_dict(_cls)
