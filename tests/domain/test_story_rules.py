"""The story aggregate's invariants, one by one, as pure functions (microseconds, no servers)."""

from __future__ import annotations

import pytest

from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
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
    MilestoneRecorded,
    PhaseTransitioned,
    SubtaskCreated,
    SubtaskUpdated,
    SummaryRecorded,
)
from fleet_actors.domain.rules import check_actor, check_expected_version
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import Accepted, DecideContext, decide, may_create_story
from fleet_actors.domain.validation import check_command
from fleet_actors.errors import InvalidCommand, RuleViolation, StoryAlreadyExists, StoryNotFound
from tests.domain.support import given, rejected, then_apply, when

CREATED = ContextCreated("Login page", "", "DESIGN")


def story_with_two_subtasks_and_decisions():
    return given(
        CREATED,
        SubtaskCreated("T1", "Form", role="DEV"),
        SubtaskCreated("T2", "API", role="DEV", dependencies=("T1",)),
        DecisionAdded("D1", "ARCHITECTURE", "Use JWT", "stateless"),
        DecisionAdded("D2", "ARCHITECTURE", "Use refresh tokens", "security"),
    )


class TestCreation:
    def test_create_story_emits_context_created(self):
        assert when(StoryState("S1"), CreateStory("Login page", "desc", "build")) == (
            ContextCreated("Login page", "desc", "BUILD"),
        )

    def test_story_is_created_only_once(self):
        assert isinstance(rejected(given(CREATED), CreateStory("again")), StoryAlreadyExists)

    @pytest.mark.parametrize(
        "command",
        [
            CreateSubtask("T1", "x", "DEV"),
            UpdateSubtask("T1", "DONE"),
            AddDecision("t", "r"),
            TransitionPhase("BUILD"),
            RecordSummary("s"),
            RecordMilestone("DEPLOYED"),
        ],
    )
    def test_nothing_happens_before_creation(self, command):
        assert isinstance(rejected(StoryState("S1"), command), StoryNotFound)

    @pytest.mark.parametrize("title", ["", "   ", "x" * 201])
    def test_title_must_be_non_empty_and_bounded(self, title):
        error = rejected(StoryState("S1"), CreateStory(title))
        assert isinstance(error, InvalidCommand) and error.field == "title"

    @pytest.mark.parametrize("story_id", ["", "a b", "a.b", "a*", ">", "x" * 65, "é"])
    def test_story_ids_must_be_subject_tokens(self, story_id):
        error = rejected(StoryState(story_id), CreateStory("t"))
        assert isinstance(error, InvalidCommand) and error.field == "story_id"

    def test_unknown_initial_phase_rejected(self):
        assert isinstance(rejected(StoryState("S1"), CreateStory("t", initial_phase="SHIP")), InvalidCommand)

    def test_state_after_creation(self):
        state = given(CREATED)
        assert (state.created, state.title, state.phase, state.version, state.created_by) == (
            True,
            "Login page",
            "DESIGN",
            1,
            "tester",
        )


class TestSubtasks:
    def test_subtask_ids_unique(self):
        state = given(CREATED, SubtaskCreated("T1", "Form", role="DEV"))
        assert isinstance(rejected(state, CreateSubtask("T1", "Again", "DEV")), RuleViolation)

    def test_dependencies_must_exist(self):
        error = rejected(given(CREATED), CreateSubtask("T1", "Form", "DEV", dependencies=("T9",)))
        assert isinstance(error, RuleViolation) and "T9" in str(error)

    def test_self_dependency_rejected(self):
        assert isinstance(
            rejected(given(CREATED), CreateSubtask("T1", "x", "DEV", dependencies=("T1",))), RuleViolation
        )

    def test_duplicate_dependency_rejected(self):
        state = given(CREATED, SubtaskCreated("T1", "Form", role="DEV"))
        assert isinstance(rejected(state, CreateSubtask("T2", "x", "DEV", dependencies=("T1", "T1"))), InvalidCommand)

    def test_role_is_normalised(self):
        (event,) = when(given(CREATED), CreateSubtask("T1", "Form", "dev"))
        assert event.role == "DEV"

    @pytest.mark.parametrize("priority", [0, 6, True, "1"])
    def test_priority_bounded(self, priority):
        error = rejected(given(CREATED), CreateSubtask("T1", "x", "DEV", priority=priority))
        assert error.field == "priority"

    @pytest.mark.parametrize(
        "path",
        [
            ["IN_PROGRESS", "DONE"],
            ["BLOCKED", "IN_PROGRESS", "DONE"],
            ["IN_PROGRESS", "BLOCKED", "PENDING", "CANCELLED"],
        ],
    )
    def test_valid_status_paths(self, path):
        state = given(CREATED, SubtaskCreated("T1", "Form", role="DEV"))
        for status in path:
            events = when(state, UpdateSubtask("T1", status))
            state = then_apply(state, *events)
        assert state.subtasks["T1"].status == path[-1]

    @pytest.mark.parametrize(
        ("path", "bad"),
        [([], "DONE"), (["IN_PROGRESS", "DONE"], "IN_PROGRESS"), (["CANCELLED"], "PENDING"), ([], "PENDING")],
    )
    def test_invalid_status_moves_rejected(self, path, bad):
        state = given(CREATED, SubtaskCreated("T1", "Form", role="DEV"), *[SubtaskUpdated("T1", s) for s in path])
        error = rejected(state, UpdateSubtask("T1", bad))
        assert isinstance(error, RuleViolation) and error.field == "status"

    def test_unknown_status_is_invalid_input(self):
        state = given(CREATED, SubtaskCreated("T1", "Form", role="DEV"))
        assert isinstance(rejected(state, UpdateSubtask("T1", "FINISHED")), InvalidCommand)

    def test_update_unknown_subtask(self):
        assert isinstance(rejected(given(CREATED), UpdateSubtask("T9", "DONE")), RuleViolation)


class TestDecisions:
    def test_decision_gets_supplied_id_when_none_given(self):
        (event,) = when(given(CREATED), AddDecision("Use JWT", "stateless"))
        assert event.decision_id == "id0" and event.decision_type == "ARCHITECTURE"

    def test_decision_ids_unique(self):
        state = story_with_two_subtasks_and_decisions()
        assert isinstance(rejected(state, AddDecision("t", "r", decision_id="D1")), RuleViolation)

    def test_rationale_required(self):
        assert rejected(given(CREATED), AddDecision("t", " ")).field == "rationale"

    def test_oversized_metadata_rejected(self):
        error = rejected(given(CREATED), AddDecision("t", "r", metadata={f"k{i}": "v" for i in range(33)}))
        assert isinstance(error, InvalidCommand) and error.field == "metadata"

    def test_relations_point_at_existing_decisions(self):
        state = story_with_two_subtasks_and_decisions()
        assert rejected(state, RelateDecisions("D1", "D9", "DEPENDS_ON")).field == "dst_id"

    def test_relation_cycle_rejected(self):
        state = story_with_two_subtasks_and_decisions()
        state = then_apply(state, *when(state, RelateDecisions("D1", "D2", "DEPENDS_ON")))
        error = rejected(state, RelateDecisions("D2", "D1", "SUPERSEDES"))
        assert isinstance(error, RuleViolation) and "cycle" in str(error)

    def test_longer_cycle_rejected(self):
        state = story_with_two_subtasks_and_decisions()
        state = then_apply(state, DecisionAdded("D3", "ARCHITECTURE", "t", "r"))
        state = then_apply(state, DecisionRelated("D1", "D2", "DEPENDS_ON"), DecisionRelated("D2", "D3", "DEPENDS_ON"))
        assert "cycle" in str(rejected(state, RelateDecisions("D3", "D1", "DEPENDS_ON")))

    def test_supersedes_marks_target(self):
        state = story_with_two_subtasks_and_decisions()
        state = then_apply(state, *when(state, RelateDecisions("D2", "D1", "supersedes")))
        assert state.decisions["D1"].status == "SUPERSEDED" and state.decisions["D2"].status == "ACCEPTED"

    def test_self_relation_and_unknown_type_rejected(self):
        state = story_with_two_subtasks_and_decisions()
        assert isinstance(rejected(state, RelateDecisions("D1", "D1", "DEPENDS_ON")), RuleViolation)
        assert isinstance(rejected(state, RelateDecisions("D1", "D2", "BLOCKS")), InvalidCommand)

    def test_impact_needs_both_ends_and_is_unique(self):
        state = story_with_two_subtasks_and_decisions()
        assert rejected(state, RecordImpact("D1", "T9")).field == "subtask_id"
        assert rejected(state, RecordImpact("D9", "T1")).field == "decision_id"
        state = then_apply(state, *when(state, RecordImpact("D1", "T1")))
        assert isinstance(rejected(state, RecordImpact("D1", "T1")), RuleViolation)
        assert state.impacts[0].subtask_id == "T1"


class TestPhases:
    def test_forward_one_step(self):
        assert when(given(CREATED), TransitionPhase("build")) == (PhaseTransitioned("DESIGN", "BUILD", ""),)

    def test_skipping_a_phase_rejected(self):
        assert isinstance(rejected(given(CREATED), TransitionPhase("TEST")), RuleViolation)

    def test_moving_back_needs_rationale(self):
        state = given(CREATED, PhaseTransitioned("DESIGN", "BUILD"), PhaseTransitioned("BUILD", "TEST"))
        assert rejected(state, TransitionPhase("DESIGN")).field == "rationale"
        (event,) = when(state, TransitionPhase("DESIGN", "auth flow was wrong"))
        assert event.to_phase == "DESIGN"

    def test_same_phase_rejected(self):
        assert isinstance(rejected(given(CREATED), TransitionPhase("DESIGN")), RuleViolation)

    def test_from_phase_must_match(self):
        assert rejected(given(CREATED), TransitionPhase("BUILD", from_phase="TEST")).field == "from_phase"

    def test_history_is_kept(self):
        state = given(CREATED, PhaseTransitioned("DESIGN", "BUILD", "ready"))
        assert state.phase == "BUILD" and state.phase_history[0].rationale == "ready"


class TestMilestonesAndSummaries:
    def test_milestone(self):
        state = given(CREATED)
        (event,) = when(state, RecordMilestone("review_passed", "ok"))
        assert event == MilestoneRecorded("id0", "REVIEW_PASSED", "ok")
        assert then_apply(state, event).milestones[0].kind == "REVIEW_PASSED"

    def test_summary(self):
        state = given(CREATED)
        assert then_apply(state, *when(state, RecordSummary("done so far"))).last_summary == "done so far"
        assert isinstance(rejected(state, RecordSummary("")), InvalidCommand)
        assert isinstance(rejected(state, RecordSummary("x" * 50_001)), InvalidCommand)


class TestBatches:
    def test_later_changes_see_earlier_ones(self):
        batch = ApplyChanges(
            (CreateSubtask("T1", "Form", "DEV"), AddDecision("JWT", "stateless"), RecordImpact("id0", "T1"))
        )
        events = when(given(CREATED), batch)
        assert [type(e) for e in events] == [SubtaskCreated, DecisionAdded, DecisionImpacted]

    def test_one_bad_change_rejects_the_whole_batch(self):
        batch = ApplyChanges((CreateSubtask("T1", "Form", "DEV"), UpdateSubtask("T1", "DONE")))
        error = rejected(given(CREATED), batch)
        assert isinstance(error, RuleViolation) and str(error).startswith("change 1:")
        assert error.change_index == 1  # what the gateway points the field path with

    def test_empty_batch_rejected(self):
        assert isinstance(rejected(given(CREATED), ApplyChanges(())), InvalidCommand)


def test_evolve_is_total_for_events_that_break_rules():
    # Imported or hand-written histories may reference unknown subtasks; replay must not crash.
    state = given(CREATED, SubtaskUpdated("T404", "DONE"), SummaryRecorded("s"))
    assert state.version == 3 and state.subtasks == {}


def test_decide_is_pure():
    state = story_with_two_subtasks_and_decisions()
    command = AddDecision("t", "r")
    assert when(state, command) == when(state, command)
    assert state == story_with_two_subtasks_and_decisions()


@pytest.mark.parametrize(
    "command",
    [
        CreateStory("Login page"),
        CreateSubtask("T1", "Form", "dev"),
        UpdateSubtask("T1", "DONE"),
        AddDecision("JWT", "stateless"),
        RelateDecisions("D1", "D2", "DEPENDS_ON"),
        RecordImpact("D1", "T1"),
        TransitionPhase("BUILD"),
        RecordMilestone("DEPLOYED"),
        RecordSummary("progress"),
        ApplyChanges((CreateStory("Login page"), CreateSubtask("T1", "Form", "dev"))),
        ApplyChanges((CreateSubtask("T1", "Form", "dev"),)),
    ],
)
def test_only_commands_that_may_create_a_story_are_accepted_before_it_exists(command):
    # The client activates an actor for a story the log lacks only when may_create_story says so.
    accepted = isinstance(decide(StoryState("S1"), command, DecideContext(("id-1", "id-2"))), Accepted)
    assert accepted == may_create_story(command)


class TestValidationWithoutState:
    """check_command judges what needs no story state; the client runs it before activating an actor."""

    @pytest.mark.parametrize(
        ("command", "field"),
        [
            (CreateStory(""), "title"),
            (CreateStory("bad \ud800 title"), "title"),  # a lone surrogate cannot be encoded
            (CreateStory("t", "fine", "LAUNCH NOW"), "initial_phase"),  # the phase set is configuration
            (CreateSubtask("T1", "x", "DEV", dependencies="abc"), "dependencies"),  # not ('a', 'b', 'c')
            (CreateSubtask("T1", "x", "DEV", dependencies=("a b",)), "dependencies"),
            (CreateSubtask("T1", "x", "DEV", priority=1.5), "priority"),
            (CreateSubtask("T1", "x", "DEV", priority=float("nan")), "priority"),
            (CreateSubtask("T1", "x", "DEV", priority="3"), "priority"),
            (AddDecision("t", "r", metadata={"k": "\udfff"}), "metadata[k]"),
            (AddDecision("t", "r", decided_by="x" * 65), "decided_by"),
            (RecordSummary(""), "summary"),
            (ApplyChanges((CreateStory("t"), CreateSubtask("T1", "", "DEV"))), "title"),
        ],
    )
    def test_malformed_commands_are_invalid_naming_the_field(self, command, field):
        with pytest.raises(InvalidCommand) as error:
            check_command(command)
        assert error.value.field == field
        # decide says the same, whatever the state
        for state in (StoryState("S1"), story_with_two_subtasks_and_decisions()):
            assert (rejected(state, command).field, type(rejected(state, command))) == (field, InvalidCommand)

    def test_a_change_in_a_batch_is_named_by_its_index(self):
        with pytest.raises(InvalidCommand) as error:
            check_command(ApplyChanges((CreateStory("t"), RecordSummary(""))))
        assert error.value.change_index == 1 and error.value.message.startswith("change 1:")

    @pytest.mark.parametrize(
        ("actor", "accepted"), [("", True), ("agent-7 (DEV)", True), ("x" * 64, True), ("x" * 65, False),
                                ("x" * 2_000_000, False), ("a\x00b", False), ("a\nb", False), ("\ud800", False)],
    )  # fmt: skip
    def test_the_actor_is_short_text_without_control_characters(self, actor, accepted):
        if accepted:
            assert check_actor(actor) == actor
        else:
            with pytest.raises(InvalidCommand) as error:
                check_actor(actor)
            assert error.value.field == "actor"

    @pytest.mark.parametrize("value", [-1, float("nan"), 1.5, "3", True, [1]])
    def test_expected_version_is_a_non_negative_integer(self, value):
        with pytest.raises(InvalidCommand) as error:
            check_expected_version(value)
        assert error.value.field == "expected_version"


def test_every_command_has_its_state_free_checks():
    """A command check_command does not know is refused as unknown: each new command needs its checks."""
    from fleet_actors.domain import commands

    kinds = [c for c in vars(commands).values() if isinstance(c, type) and issubclass(c, commands.Command)]
    unknown = check_command.dispatch(object)
    missing = [c.__name__ for c in kinds if c is not commands.Command and check_command.dispatch(c) is unknown]
    assert not missing, f"no check_command for {missing}"
