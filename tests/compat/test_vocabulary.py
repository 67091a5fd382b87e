"""Item 1: the roles and phases the fleet's callers send, through stubs built from protos/."""

from __future__ import annotations

import grpc
import pytest

from fleet_actors.gateway.scope_policy import ScopePolicy
from tests.compat.conftest import Compat
from tests.gateway.conftest import error_field, rpc_error

ROLES = ["architect", "developer", "devops", "qa", "data", "DEV", "QA", "ARCHITECT", "DEVOPS", "DATA"]
PHASES = ["DESIGN", "BUILD", "TEST", "DOC", "DOCS"]
MINIMUM = ["CASE_HEADER", "PLAN_HEADER"]


@pytest.fixture(scope="module")
async def story(compat: Compat) -> str:
    """A story in BUILD with a developer subtask, an architecture decision about it, and a summary."""
    story_id = await compat.new_story()
    response = await compat.update(
        story_id,
        compat.change("CREATE", "SUBTASK", {"title": "Card form", "role": "developer"}, "T1"),
        compat.change("CREATE", "DECISION", {"title": "Tokenise cards at the edge", "rationale": "PCI scope"}, "D1"),
        compat.change("UPDATE", "DECISION", {"subtask_id": "T1"}, "D1"),
        compat.change("UPDATE", "SUMMARY", {"summary": "form designed"}),
        role="architect",
    )
    assert not response.warnings
    moved = await compat.stub.TransitionPhase(compat.pb.TransitionPhaseRequest(story_id=story_id, to_phase="BUILD"))
    assert moved.current_phase == "BUILD"
    return story_id


async def test_every_role_and_phase_the_callers_send_is_served_from_the_policy(compat: Compat, story: str) -> None:
    policy = ScopePolicy.load()
    for role in ROLES:
        for phase in PHASES:
            response = await compat.stub.GetContext(
                compat.pb.GetContextRequest(story_id=story, role=role, phase=phase, min_version=6)
            )
            expected = [s.value for s in policy.scope(role, "DOCS" if phase == "DOC" else phase).sections]
            assert (list(response.scopes), list(response.warnings)) == (expected, []), (role, phase)
            assert response.version == "6"


async def test_lower_case_developer_sees_its_own_work(compat: Compat, story: str) -> None:
    response = await compat.stub.GetContext(
        compat.pb.GetContextRequest(story_id=story, role="developer", phase="BUILD", min_version=6)
    )
    assert "[T1] Card form" in response.context and "Tokenise cards at the edge" in response.context


@pytest.mark.parametrize(("role", "phase", "named"), [("developer", "PLAN", "phase 'PLAN'"),
                                                      ("qa", "VALIDATE", "phase 'VALIDATE'"),
                                                      ("product-owner", "BUILD", "role 'product-owner'")])  # fmt: skip
async def test_an_unknown_role_or_phase_gets_the_minimum_and_a_warning(
    compat: Compat, story: str, role: str, phase: str, named: str
) -> None:
    response = await compat.stub.GetContext(
        compat.pb.GetContextRequest(story_id=story, role=role, phase=phase, min_version=6)
    )
    assert list(response.scopes) == MINIMUM
    assert any(named in w for w in response.warnings) and any("minimum" in w for w in response.warnings)
    # the story's header and plan, never another role's sections
    assert "Checkout flow" in response.context and "## Plan" in response.context
    assert "Tokenise" not in response.context and "Card form" not in response.context
    assert "form designed" not in response.context


async def test_a_story_moves_through_validate_and_back_only_with_a_rationale(compat: Compat) -> None:
    pb = compat.pb
    sid = await compat.new_story()
    for target, current in (("BUILD", "BUILD"), ("VALIDATE", "VALIDATE")):
        moved = await compat.stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=sid, to_phase=target))
        assert moved.current_phase == current
    here = await compat.version(sid)
    context = await compat.stub.GetContext(pb.GetContextRequest(story_id=sid, role="qa", min_version=here))
    assert list(context.scopes) == MINIMUM and "Phase VALIDATE" in context.context
    assert any("VALIDATE" in w for w in context.warnings)
    back = await rpc_error(compat.stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=sid, to_phase="BUILD")))
    assert (back.code(), error_field(back)) == (grpc.StatusCode.FAILED_PRECONDITION, "rationale")
    unknown = await rpc_error(compat.stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=sid, to_phase="SHIP")))
    assert (unknown.code(), error_field(unknown)) == (grpc.StatusCode.INVALID_ARGUMENT, "to_phase")
    skip = await rpc_error(compat.stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=sid, to_phase="DOC")))
    assert (skip.code(), error_field(skip)) == (grpc.StatusCode.FAILED_PRECONDITION, "to_phase")
    assert await compat.version(sid) == here  # the refusals appended nothing
    moved = await compat.stub.TransitionPhase(
        pb.TransitionPhaseRequest(story_id=sid, from_phase="VALIDATE", to_phase="BUILD", rationale="a regression")
    )
    assert (moved.current_phase, moved.version) == ("BUILD", here + 1)
    for target, current in (("TEST", "TEST"), ("doc", "DOCS")):  # VALIDATE is optional; DOC is DOCS
        moved = await compat.stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=sid, to_phase=target))
        assert moved.current_phase == current


async def test_rehydrate_session_serves_lower_case_and_unknown_roles(compat: Compat, story: str) -> None:
    response = await compat.stub.RehydrateSession(
        compat.pb.RehydrateSessionRequest(case_id=story, roles=["developer", "planner"], min_version=6)
    )
    assert set(response.packs) == {"DEVELOPER", "PLANNER"}
    assert [s.subtask_id for s in response.packs["DEVELOPER"].subtasks] == ["T1"]
    planner = response.packs["PLANNER"]
    assert planner.case_header.title == "Checkout flow" and not planner.subtasks and not planner.decisions
    assert any("'planner'" in w for w in response.warnings)


async def test_an_empty_role_is_still_invalid_and_appends_nothing(compat: Compat, story: str) -> None:
    error = await rpc_error(compat.stub.GetContext(compat.pb.GetContextRequest(story_id=story, role="")))
    assert (error.code(), error_field(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "role")
