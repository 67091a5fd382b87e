"""Configured phases, decision statuses, plan versions and kept properties (pure, no servers)."""

from __future__ import annotations

import itertools

import pytest

from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    ChangeDecisionStatus,
    CreateStory,
    CreateSubtask,
    RecordPlanVersion,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.events import (
    ContextCreated,
    DecisionAdded,
    DecisionStatusChanged,
    PhaseTransitioned,
    PlanVersioned,
    SubtaskCreated,
    SubtaskUpdated,
)
from fleet_actors.domain.phases import PhaseRules
from fleet_actors.domain.redaction import redact_value
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import Accepted, DecideContext, Rejected, decide
from fleet_actors.errors import InvalidCommand, RuleViolation
from tests.domain.support import given, then_apply

#: as the packaged policy file has them
FLEET = PhaseRules(
    ("PLAN", "DESIGN", "BUILD", "VALIDATE", "TEST", "DOCS"), frozenset({"PLAN", "VALIDATE"}), {"DOC": "DOCS"}
)
CREATED = ContextCreated("Login page", "", "DESIGN")


def decided(state: StoryState, command, phases: PhaseRules = FLEET):
    return decide(state, command, DecideContext(("id0", "id1"), phases))


@pytest.mark.parametrize(
    ("path", "target"),
    [(("DESIGN", "BUILD"), "VALIDATE"), (("DESIGN", "BUILD"), "TEST"), (("DESIGN", "BUILD", "VALIDATE"), "TEST"),
     (("DESIGN", "BUILD", "TEST"), "doc")],
)  # fmt: skip
def test_forward_moves_may_pass_optional_phases_only(path: tuple[str, ...], target: str) -> None:
    state = given(*[CREATED, *(PhaseTransitioned(a, b) for a, b in itertools.pairwise(path))])
    result = decided(state, TransitionPhase(target))
    assert isinstance(result, Accepted)
    assert result.events[0].to_phase == FLEET.canonical(target, "to_phase")


def test_a_required_phase_cannot_be_skipped_and_moving_back_needs_a_rationale() -> None:
    state = given(CREATED, PhaseTransitioned("DESIGN", "BUILD"), PhaseTransitioned("BUILD", "VALIDATE"))
    skip = decided(state, TransitionPhase("DOCS"))
    assert isinstance(skip, Rejected) and skip.error.field == "to_phase" and "TEST" in skip.error.message
    back = decided(state, TransitionPhase("BUILD"))
    assert isinstance(back, Rejected) and back.error.field == "rationale"
    assert isinstance(decided(state, TransitionPhase("BUILD", "tests found a regression")), Accepted)


def test_phases_outside_the_configuration_are_invalid_and_the_default_is_strict() -> None:
    state = given(CREATED, PhaseTransitioned("DESIGN", "BUILD"))
    unknown = decided(state, TransitionPhase("SHIP"))
    assert isinstance(unknown, Rejected) and isinstance(unknown.error, InvalidCommand)
    # the domain's own default knows no VALIDATE: the phases are an input, not a constant
    default = decide(state, TransitionPhase("VALIDATE"))
    assert isinstance(default, Rejected) and isinstance(default.error, InvalidCommand)
    created = decided(StoryState("S1"), CreateStory("t", initial_phase="plan"))
    assert created.events[0].initial_phase == "PLAN"
    assert decided(StoryState("S1"), CreateStory("t", initial_phase="")).events[0].initial_phase == "DESIGN"


def test_batches_keep_the_configured_phases() -> None:
    state = given(CREATED, PhaseTransitioned("DESIGN", "BUILD"))
    result = decided(state, ApplyChanges((TransitionPhase("VALIDATE"), AddDecision("t", "r"))))
    assert isinstance(result, Accepted) and result.events[1].decision_id == "id0"


def test_decision_status_and_plan_versions_are_events_of_their_own() -> None:
    state = given(CREATED, DecisionAdded("D1", "ARCHITECTURE", "JWT", "stateless"))
    (event,) = decided(state, ChangeDecisionStatus("D1", "resolved", "agreed", {"votes": "3"})).events
    assert event == DecisionStatusChanged("D1", "RESOLVED", "agreed", {"votes": "3"})
    assert then_apply(state, event).decisions["D1"].status == "RESOLVED"
    missing = decided(state, ChangeDecisionStatus("D9", "RESOLVED"))
    assert isinstance(missing, Rejected) and isinstance(missing.error, RuleViolation)
    (plan,) = decided(state, RecordPlanVersion("P-7", 2, "approved")).events
    assert plan == PlanVersioned("P-7", 2, "APPROVED")
    after = then_apply(state, plan)
    assert (after.plan_id, after.plan_version, after.plan_status) == ("P-7", 2, "APPROVED")
    assert isinstance(decided(state, RecordPlanVersion("P-7", 0)), Rejected)


def test_properties_are_kept_on_the_event_within_limits() -> None:
    state = given(CREATED)
    big = {"data": "x" * 10_000, "plan_id": "P1"}
    (event,) = decided(state, CreateSubtask("T1", "API", "DEV", properties=big)).events
    assert event.properties == big
    too_big = decided(state, CreateSubtask("T1", "API", "DEV", properties={"data": "x" * 60_000}))
    assert isinstance(too_big, Rejected) and too_big.error.field == "properties.data"


def test_redacting_an_event_leaves_ids_and_reports_the_fields() -> None:
    event = DecisionAdded("sk-abcdefghijklmnopqrstu12345", "ARCHITECTURE", "DB", "password=hunter2",
                          metadata={"dsn": "postgres://app:pw1@db/x"})  # fmt: skip
    redacted, fields = redact_value(event)
    assert redacted.decision_id == event.decision_id
    assert redacted.rationale == "password=[REDACTED:password]"
    assert redacted.metadata == {"dsn": "postgres://app:[REDACTED:connection_string]@db/x"}
    assert fields == ["rationale", "metadata.dsn"]
    assert redact_value(redacted) == (redacted, [])


def test_a_note_on_a_subtask_is_recorded_without_a_move_even_when_final() -> None:
    done = (SubtaskCreated("T1", "Form"), SubtaskUpdated("T1", "IN_PROGRESS"), SubtaskUpdated("T1", "DONE"))
    state = given(CREATED, *done)
    (event,) = decided(state, UpdateSubtask("T1", "DONE", "", {"pr": "#42"})).events
    assert event == SubtaskUpdated("T1", "DONE", "", {"pr": "#42"})
    assert then_apply(state, event).subtasks["T1"].status == "DONE"
    bare = decided(state, UpdateSubtask("T1", "DONE"))
    assert isinstance(bare, Rejected) and bare.error.field == "status"
