"""Genesis planning (pure) and the import of one story against the in-memory store."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from fleet_actors.adapters.memory.event_store import InMemoryEventStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.commands import (
    AddDecision,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.migration.compare import compare_story
from fleet_actors.migration.importer import (
    IMPORT_ACTOR,
    Action,
    GenesisPlan,
    classify,
    import_command_id,
    import_story,
    parse_import_command_id,
    phase_path,
    plan_genesis,
    status_path,
)
from fleet_actors.migration.legacy_reader import (
    LegacyDecision,
    LegacyImpact,
    LegacyMilestone,
    LegacyRelation,
    LegacyStory,
    LegacySubtask,
)

UTC = dt.UTC
T0 = dt.datetime(2025, 2, 1, 9, tzinfo=UTC)
NOW = dt.datetime(2026, 1, 1, tzinfo=UTC)


def hours(n: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


def legacy_story(story_id: str = "S1") -> LegacyStory:
    return LegacyStory(
        story_id=story_id,
        title="Checkout",
        description="pay by card",
        phase="TEST",
        created_at=T0,
        created_by="ann",
        updated_at=hours(100),
        subtasks=(
            # T1 depends on T3: creation must follow dependency order, not id order
            LegacySubtask("T1", "Form", "DEV", "DONE", dependencies=("T3",), created_at=hours(5), updated_at=hours(50)),
            LegacySubtask("T2", "API", "DEV", "BLOCKED", created_at=hours(2)),
            LegacySubtask("T3", "Schema", "ARCHITECT", "CANCELLED", created_at=hours(1), updated_at=hours(3)),
            LegacySubtask("T4", "Docs", "DEV", "PENDING", dependencies=("T1", "T2")),
        ),
        decisions=(
            LegacyDecision("D1", "Stripe", "PCI", decided_by="bob", decided_at=hours(4), metadata={"adr": "7"}),
            LegacyDecision("D2", "Adyen", "fees", "TECHNOLOGY", decided_at=hours(30)),
        ),
        relations=(LegacyRelation("D2", "D1", "SUPERSEDES"),),
        impacts=(LegacyImpact("D2", "T4"),),
        milestones=(LegacyMilestone("M1", "KICKOFF", "go", hours(1), "carol"), LegacyMilestone("M2", "DEMO", "")),
    )


def envelope(plan: GenesisPlan, n: int) -> EventEnvelope:
    """The n-th planned event as the import would store it."""
    step = plan.steps[n]
    return EventEnvelope(f"e{n}", plan.story_id, n + 1, step.at, step.event, plan.command_id(n), step.actor)


def envelopes(plan: GenesisPlan, upto: int | None = None) -> list[EventEnvelope]:
    return [envelope(plan, n) for n in range(len(plan.steps) if upto is None else upto)]


def fold_plan(plan: GenesisPlan) -> StoryState:
    return fold(StoryState(plan.story_id), envelopes(plan))


def test_status_and_phase_paths_follow_the_state_machines():
    assert status_path("PENDING") == ()
    assert status_path("IN_PROGRESS") == ("IN_PROGRESS",)
    assert status_path("DONE") == ("IN_PROGRESS", "DONE")
    assert status_path("BLOCKED") == ("BLOCKED",)
    assert status_path("CANCELLED") == ("CANCELLED",)
    assert status_path("WIP") == ()
    assert phase_path("DESIGN") == ()
    assert phase_path("DOCS") == ("BUILD", "TEST", "DOCS")
    assert phase_path("SOMEDAY") == ()


def test_the_plan_rebuilds_the_legacy_story_from_ordinary_commands():
    story = legacy_story()
    plan = plan_genesis(story, now=NOW)
    assert plan.problems == ()
    state = fold_plan(plan)
    assert compare_story(story, state) == []
    assert state == plan.state
    kinds = [type(step.command) for step in plan.steps]
    assert kinds[0] is CreateStory
    assert set(kinds) == {
        CreateStory,
        CreateSubtask,
        AddDecision,
        RelateDecisions,
        RecordImpact,
        UpdateSubtask,
        TransitionPhase,
        RecordMilestone,
    }
    created = [step.command.subtask_id for step in plan.steps if isinstance(step.command, CreateSubtask)]
    assert created.index("T3") < created.index("T1") < created.index("T4")
    assert [
        s.command.status for s in plan.steps if isinstance(s.command, UpdateSubtask) and s.command.subtask_id == "T1"
    ] == ["IN_PROGRESS", "DONE"]
    assert [s.command.to_phase for s in plan.steps if isinstance(s.command, TransitionPhase)] == ["BUILD", "TEST"]


def test_the_plan_keeps_the_legacy_times_and_authors():
    state = fold_plan(plan_genesis(legacy_story(), now=NOW))
    assert (state.created_at, state.created_by) == (T0, "ann")
    assert state.subtasks["T3"].created_at == hours(1)
    assert state.subtasks["T3"].updated_at == hours(3)  # cancelled when the legacy graph says
    assert state.subtasks["T1"].updated_at == hours(50)
    assert state.subtasks["T2"].updated_at == hours(100)  # status time unknown: as of the story's last change
    assert (state.decisions["D1"].decided_at, state.decisions["D1"].decided_by) == (hours(4), "bob")
    assert state.decisions["D2"].decided_by == IMPORT_ACTOR
    assert [(m.milestone_id, m.at, m.actor) for m in state.milestones] == [
        ("M1", hours(1), "carol"),
        ("M2", hours(100), IMPORT_ACTOR),
    ]
    assert [(p.to_phase, p.at) for p in state.phase_history] == [("BUILD", hours(100)), ("TEST", hours(100))]
    assert state.updated_at == hours(100)


def test_no_command_is_placed_before_what_it_depends_on():
    plan = plan_genesis(legacy_story(), now=NOW)
    times = [step.at for step in plan.steps]
    assert times == sorted(times)
    # T4 has no time of its own: it comes after T1 (hours 5) at the earliest
    t4 = next(s for s in plan.steps if isinstance(s.command, CreateSubtask) and s.command.subtask_id == "T4")
    assert t4.at == hours(5)
    # the relation D2 -> D1 comes with the later decision
    relation = next(s for s in plan.steps if isinstance(s.command, RelateDecisions))
    assert relation.at == hours(30)


def test_a_story_without_any_time_is_imported_at_now():
    story = dataclasses.replace(
        legacy_story(),
        created_at=None,
        updated_at=None,
        subtasks=(),
        decisions=(),
        relations=(),
        impacts=(),
        milestones=(),
    )
    plan = plan_genesis(story, now=NOW)
    assert {step.at for step in plan.steps} == {NOW}


def test_dependency_cycles_are_broken_and_reported():
    story = dataclasses.replace(
        legacy_story(),
        subtasks=(
            LegacySubtask("A", "a", "DEV", dependencies=("B",)),
            LegacySubtask("B", "b", "DEV", dependencies=("A",)),
        ),
        impacts=(),
    )
    plan = plan_genesis(story, now=NOW)
    assert [(p.node, p.reason) for p in plan.problems] == [
        ("subtask B", "dependency on A closes a cycle; that dependency is dropped")
    ]
    assert plan.state.subtasks["A"].dependencies == ("B",) and plan.state.subtasks["B"].dependencies == ()


def test_what_the_domain_rejects_is_reported_and_the_rest_planned():
    story = dataclasses.replace(
        legacy_story(),
        subtasks=(
            LegacySubtask("T1", "Form", "", "DONE"),  # no role: CreateSubtask is rejected
            LegacySubtask("T2", "API", "DEV", dependencies=("T1",)),
            LegacySubtask("T3", "Odd", "DEV", "WIP"),  # unknown status (the reader reported it): stays PENDING
        ),
        decisions=(LegacyDecision("D1", "Stripe", ""),),  # no rationale
        relations=(),
        impacts=(LegacyImpact("D1", "T2"),),
    )
    plan = plan_genesis(story, now=NOW)
    assert [(p.node, p.reason) for p in plan.problems] == [
        ("subtask T1", "not imported: role must not be empty"),
        ("subtask T2", "dependency on T1 dropped: that subtask could not be imported"),
        ("decision D1", "not imported: rationale must not be empty"),
        ("decision D1 impacts T2", "dropped: decision D1 could not be imported"),
    ]  # the refused subtask's status changes are covered by its own problem
    assert sorted(plan.state.subtasks) == ["T2", "T3"]
    assert plan.state.subtasks["T3"].status == "PENDING"
    assert len(plan.state.milestones) == 2 and plan.state.phase == "TEST"


def test_a_story_the_domain_cannot_create_plans_nothing():
    plan = plan_genesis(dataclasses.replace(legacy_story(), title=""), now=NOW)
    assert plan.steps == ()
    assert [p.reason for p in plan.problems] == ["not imported: title must not be empty"]


def test_command_ids_are_stable_valid_and_parse_back():
    assert import_command_id("S1", 3, 12) == "import-S1-3of12"
    assert parse_import_command_id("S1", "import-S1-3of12") == (3, 12)
    assert parse_import_command_id("S2", "import-S1-3of12") is None
    assert parse_import_command_id("S1", "c7") is None
    long_id = "s" * 64
    command_id = import_command_id(long_id, 999, 1000)
    assert len(command_id) <= 64 and parse_import_command_id(long_id, command_id) == (999, 1000)
    assert plan_genesis(legacy_story(), now=NOW).command_id(0) == plan_genesis(legacy_story(), now=NOW).command_id(0)


def test_classify_tells_new_done_interrupted_and_foreign_stories_apart():
    plan = plan_genesis(legacy_story(), now=NOW)
    total = len(plan.steps)
    assert classify(plan, [])[:2] == (Action.IMPORT, 0)
    assert classify(plan, envelopes(plan, total))[0] == Action.ALREADY_IMPORTED
    assert classify(plan, envelopes(plan, 5))[:2] == (Action.RESUME, 5)
    foreign = dataclasses.replace(envelopes(plan, 1)[0], command_id="user-1")
    assert classify(plan, [foreign])[0] == Action.EXISTS
    # the legacy story changed since the interrupted import: its plan no longer matches what is stored
    changed = plan_genesis(dataclasses.replace(legacy_story(), title="Checkout v2"), now=NOW)
    assert classify(changed, envelopes(plan, 5))[0] == Action.EXISTS


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore()


async def test_import_appends_the_plan_and_a_second_run_appends_nothing(store):
    outcome = await import_story(store, legacy_story(), now=NOW)
    plan = plan_genesis(legacy_story(), now=NOW)
    assert (outcome.action, outcome.events, outcome.problems) == (Action.IMPORT, len(plan.steps), [])
    runtime = StoryRuntime("S1", store)
    await runtime.load()
    assert compare_story(legacy_story(), runtime.state) == []
    assert runtime.state.created_at == T0
    again = await import_story(store, legacy_story(), now=NOW)
    assert (again.action, again.events) == (Action.ALREADY_IMPORTED, 0)
    assert await store.last_sequence("S1") == len(plan.steps)


async def test_dry_run_writes_nothing(store):
    outcome = await import_story(store, legacy_story(), dry_run=True, now=NOW)
    assert (outcome.action, outcome.events) == (Action.IMPORT, len(plan_genesis(legacy_story(), now=NOW).steps))
    assert await store.last_sequence("S1") == 0


async def test_an_interrupted_import_resumes_next_to_live_commands(store):
    plan = plan_genesis(legacy_story(), now=NOW)
    first = StoryRuntime("S1", store)
    for n in range(4):  # the import died after four commands
        await first.execute(CommandRequest("S1", plan.steps[n].command, plan.command_id(n), IMPORT_ACTOR))
    await first.execute(CommandRequest("S1", RecordMilestone("DEMO", "live", "U1"), "user-1", "dana"))
    outcome = await import_story(store, legacy_story(), now=NOW)
    assert (outcome.action, outcome.events) == (Action.RESUME, len(plan.steps) - 4)
    runtime = StoryRuntime("S1", store)
    await runtime.load()
    assert runtime.state.version == len(plan.steps) + 1
    assert [m.milestone_id for m in runtime.state.milestones] == ["M1", "U1", "M2"]


async def test_a_story_created_elsewhere_is_skipped(store):
    await StoryRuntime("S1", store).execute(CommandRequest("S1", CreateStory("Mine"), "user-1", "dana"))
    outcome = await import_story(store, legacy_story(), now=NOW)
    assert outcome.action == Action.EXISTS and "not created by the import" in outcome.note
    assert await store.last_sequence("S1") == 1


async def test_concurrent_imports_of_one_story_write_it_once(store):
    outcomes = await asyncio.gather(*(import_story(store, legacy_story(), now=NOW) for _ in range(3)))
    plan = plan_genesis(legacy_story(), now=NOW)
    assert sum(o.events for o in outcomes) == len(plan.steps)
    runtime = StoryRuntime("S1", store)
    await runtime.load()
    assert runtime.state.version == len(plan.steps) and compare_story(legacy_story(), runtime.state) == []
