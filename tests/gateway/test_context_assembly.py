"""Pure context assembly: sections per role and phase, token budgets, packs and event views."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, timedelta

import pytest

from fleet_actors.domain.events import (
    Alternative,
    ContextCreated,
    DecisionAdded,
    DecisionImpacted,
    DecisionRelated,
    EventEnvelope,
    MilestoneRecorded,
    PhaseTransitioned,
    SubtaskCreated,
    SubtaskUpdated,
    SummaryRecorded,
)
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import RuleViolation
from fleet_actors.gateway.context_assembly import (
    TRUNCATION_MARK,
    assemble_context,
    describe_event,
    estimate_tokens,
    plan_status,
    role_pack,
    story_event,
    timeline_milestones,
)
from fleet_actors.gateway.scope_policy import ScopePolicy
from tests.domain.support import T0, given

EVENTS = (
    ContextCreated("Checkout flow", "pay with cards"),
    SubtaskCreated("T1", "Payment form", "card fields", "DEV", priority=2),
    SubtaskCreated("T2", "Payment API", "", "DEV", ("T1",)),
    SubtaskCreated("T3", "Load test", "", "QA"),
    SubtaskCreated("T4", "Pipeline", "", "DEVOPS"),
    DecisionAdded("D1", "ARCHITECTURE", "Use Stripe", "PCI scope", (Alternative("Adyen", "higher fees"),)),
    DecisionAdded("D2", "ARCHITECTURE", "Use Adyen", "lower fees"),
    DecisionAdded("D3", "TESTING", "k6 for load", "scriptable"),
    DecisionRelated("D2", "D1", "SUPERSEDES"),
    DecisionImpacted("D2", "T2"),
    DecisionImpacted("D3", "T3"),
    SubtaskUpdated("T1", "IN_PROGRESS"),
    PhaseTransitioned("DESIGN", "BUILD", "design approved"),
    MilestoneRecorded("M1", "KICKOFF", "build started"),
    SummaryRecorded("Form half done; API next."),
)


@pytest.fixture(scope="module")
def policy() -> ScopePolicy:
    return ScopePolicy.load()


@pytest.fixture(scope="module")
def state() -> StoryState:
    return given(*EVENTS)


def section_titles(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def test_developer_in_build_sees_its_own_work(policy: ScopePolicy, state: StoryState) -> None:
    result = assemble_context(state, policy.scope("DEV", "BUILD"), tools="TOOLS")
    assert result.scopes == ("CASE_HEADER", "PLAN_HEADER", "SUBTASKS_ROLE", "DECISIONS_RELEVANT_ROLE", "DEPS_RELEVANT")
    assert section_titles(result.context) == [
        "Story", "Plan", "Your subtasks", "Decisions affecting your work", "Dependencies of your work",
    ]  # fmt: skip
    assert "[T1] Payment form" in result.context and "[T2] Payment API" in result.context
    assert "T3" not in result.context and "T4" not in result.context  # QA's and DEVOPS's work
    assert "[D2] Use Adyen" in result.context and "Use Stripe" not in result.context.split("## Decisions")[1]
    assert "- T2 depends on T1 (Payment form, IN_PROGRESS)" in result.context
    assert "- D2 SUPERSEDES D1" in result.context
    assert result.token_count == estimate_tokens(result.context) and result.trimmed == ()
    assert result.version == state.version == len(EVENTS)
    assert result.tools == "TOOLS" and "DEV agent" in result.system and "BUILD" in result.system


def test_devops_sees_its_subtasks_in_the_developer_sections(policy: ScopePolicy, state: StoryState) -> None:
    result = assemble_context(state, policy.scope("devops", "build"))
    assert "[T4] Pipeline" in result.context and "T1" not in result.context.split("## Your subtasks")[1]


def test_architect_and_qa_see_the_whole_story(policy: ScopePolicy, state: StoryState) -> None:
    architect = assemble_context(state, policy.scope("ARCHITECT", "DESIGN")).context
    assert all(f"[{d}]" in architect for d in ("D1", "D2", "D3"))
    assert "Rationale: PCI scope" in architect and "Alternative considered: Adyen: higher fees" in architect
    assert "KICKOFF: build started" in architect and "phase DESIGN -> BUILD" in architect
    assert "Form half done; API next." in architect
    qa = assemble_context(state, policy.scope("QA", "BUILD")).context
    assert "- [T3] Load test | PENDING" in qa and "- [D1] Use Stripe (SUPERSEDED)" in qa
    assert "Rationale" not in qa  # the _MIN sections leave details out


def test_a_focus_subtask_comes_first_and_narrows_the_relevant_decisions(policy: ScopePolicy, state: StoryState) -> None:
    result = assemble_context(state, policy.scope("DEV", "BUILD"), subtask_id="T1")
    own = result.context.split("## Your subtasks")[1].split("##")[0]
    assert own.index("[T1] (focus)") < own.index("[T2]")
    assert "## Decisions affecting your work\n(none)" in result.context  # nothing impacts T1
    focused = assemble_context(state, policy.scope("QA", "TEST"), subtask_id="T3")
    assert "[T3] (focus) Load test" in focused.context


def test_an_unknown_focus_subtask_is_a_rule_violation(policy: ScopePolicy, state: StoryState) -> None:
    with pytest.raises(RuleViolation) as caught:
        assemble_context(state, policy.scope("DEV", "BUILD"), subtask_id="T99")
    assert caught.value.field == "subtask_id"


def test_the_budget_drops_the_least_important_sections_first(policy: ScopePolicy, state: StoryState) -> None:
    scope = policy.scope("ARCHITECT", "BUILD")
    full = assemble_context(state, scope)
    assert assemble_context(state, scope, token_budget=full.token_count).trimmed == ()
    one_less = assemble_context(state, scope, token_budget=full.token_count - 1)
    assert one_less.trimmed == ("MILESTONES",) and one_less.token_count <= full.token_count - 1
    assert "## Milestones" not in one_less.context
    headers_only = assemble_context(state, policy.scope("ARCHITECT", "BUILD"), token_budget=60)
    assert headers_only.scopes == ("CASE_HEADER", "PLAN_HEADER")
    dropped = list(headers_only.trimmed)
    assert dropped == [s.value for s in reversed(scope.importance) if s.value in dropped]  # least important first
    assert headers_only.token_count <= 60


@pytest.mark.parametrize("budget", [1, 5, 9, 12, 20, 33])
def test_a_tiny_budget_keeps_a_truncated_case_header(policy: ScopePolicy, state: StoryState, budget: int) -> None:
    result = assemble_context(state, policy.scope("QA", "DESIGN"), token_budget=budget)
    assert result.scopes == ("CASE_HEADER",) and result.token_count <= budget
    assert result.context.startswith("## Story"[: budget * 4])
    if budget * 4 > len(TRUNCATION_MARK):
        assert result.context.endswith(TRUNCATION_MARK)


def test_token_estimate_is_four_characters_per_token() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


def test_plan_status_follows_the_subtasks() -> None:
    assert plan_status(given(ContextCreated("t"))) == "EMPTY"
    assert plan_status(given(ContextCreated("t"), SubtaskCreated("T1", "a"))) == "PLANNED"
    started = (ContextCreated("t"), SubtaskCreated("T1", "a"), SubtaskUpdated("T1", "IN_PROGRESS"))
    assert plan_status(given(*started)) == "IN_PROGRESS"
    assert plan_status(given(*started, SubtaskUpdated("T1", "DONE"))) == "DONE"


def test_packs_follow_the_role_scope(policy: ScopePolicy, state: StoryState) -> None:
    qa = role_pack(state, policy.scope("QA", "BUILD"), include_summaries=False)
    assert qa.role == "QA" and qa.case_header.title == "Checkout flow" and qa.case_header.status == "ACTIVE"
    assert (qa.plan_header.total_subtasks, qa.plan_header.completed_subtasks, qa.plan_header.version) == (4, 0, 15)
    assert [s.subtask_id for s in qa.subtasks] == ["T1", "T2", "T3", "T4"]  # priority, then creation order
    assert [d.id for d in qa.decisions] == ["D1", "D2", "D3"]
    assert list(qa.decision_deps) == []  # no DEPS_* section for QA in BUILD
    assert {(i.decision_id, i.subtask_id) for i in qa.impacted} == {("D2", "T2"), ("D3", "T3")}
    assert [(m.event_type, m.description) for m in qa.milestones] == [("KICKOFF", "build started")]
    assert (
        qa.last_summary == ""
        and qa.token_budget_hint == assemble_context(state, policy.scope("QA", "BUILD")).token_count
    )

    dev = role_pack(state, policy.scope("DEV", "BUILD"), include_summaries=True)
    assert [s.subtask_id for s in dev.subtasks] == ["T1", "T2"]
    assert [d.id for d in dev.decisions] == ["D2"] and dev.decisions[0].status == "ACCEPTED"
    assert [(r.src_id, r.relation_type, r.dst_id) for r in dev.decision_deps] == [("D2", "SUPERSEDES", "D1")]
    assert [(i.decision_id, i.subtask_id, i.title) for i in dev.impacted] == [("D2", "T2", "Payment API")]
    assert list(dev.milestones) == [] and dev.last_summary == "Form half done; API next."
    assert list(dev.subtasks[1].dependencies) == ["T1"] and dev.subtasks[0].priority == 2


def envelopes(events, story_id: str = "S1") -> list[EventEnvelope]:
    return [
        EventEnvelope(f"e{i}", story_id, i, T0 + timedelta(seconds=i), event, f"c{i}", "alice")
        for i, event in enumerate(events, start=1)
    ]


def test_a_timeline_replaces_the_recorded_milestones(policy: ScopePolicy, state: StoryState) -> None:
    timeline = envelopes(EVENTS)[-3:]
    pack = role_pack(state, policy.scope("QA", "BUILD"), include_summaries=True, timeline=timeline)
    assert [m.event_type for m in pack.milestones] == ["phase_transitioned", "milestone_recorded", "summary_recorded"]
    assert pack.milestones[0].ts_ms == int(timeline[0].timestamp.timestamp() * 1000)
    assert (
        pack.milestones[0].actor == "alice"
        and pack.milestones[0].description == "phase DESIGN -> BUILD: design approved"
    )


def test_every_event_type_has_a_description_and_a_wire_form() -> None:
    for envelope in envelopes(EVENTS):
        assert describe_event(envelope) not in ("", envelope.event_type)
        wire = story_event(envelope)
        assert (wire.version, wire.event_type, wire.event_id, wire.command_id, wire.actor, wire.story_id) == (
            envelope.version, envelope.event_type, envelope.event_id, envelope.command_id, "alice", "S1",
        )  # fmt: skip
        assert wire.timestamp.ToDatetime(tzinfo=UTC) == envelope.timestamp
        payload = json.loads(wire.payload_json)
        # Plain JSON, nested values (alternatives) as objects: what an agent can read without our types.
        assert payload == json.loads(json.dumps(dataclasses.asdict(envelope.payload)))
    assert [m.description for m in timeline_milestones(envelopes(EVENTS[:2]))] == [
        "story created: Checkout flow (phase DESIGN)",
        "subtask T1 created: Payment form (DEV)",
    ]
