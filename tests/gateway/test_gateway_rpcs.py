"""Every RPC through a real grpc.aio client against the running gateway and real servers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import valkey.asyncio as valkey_async

from fleet_actors.domain.events import Alternative
from fleet_actors.gateway.context_changes import TOOLS_TEXT
from fleet_actors.gateway.scope_policy import ScopePolicy
from fleet_actors.proto import context_service_pb2 as pb
from tests.gateway.conftest import Gateway, new_story, rpc_error


def change(operation: str, entity: str, payload: dict, entity_id: str = "", reason: str = "") -> pb.ContextChange:
    return pb.ContextChange(
        operation=operation, entity_type=entity, entity_id=entity_id, payload=json.dumps(payload), reason=reason
    )


async def version_of(gateway: Gateway, story_id: str) -> int:
    return (await gateway.client.get_story(story_id)).version


@pytest.fixture(scope="module")
async def story(gateway: Gateway) -> dict:
    """A story built through the command RPCs; returns its ids and the responses."""
    stub = gateway.stub
    story_id = await new_story(stub)
    t1 = await stub.CreateTask(pb.CreateTaskRequest(story_id=story_id, task_id="T1", title="Payment form", role="DEV"))
    t2 = await stub.CreateTask(
        pb.CreateTaskRequest(
            story_id=story_id, task_id="T2", title="Payment API", role="dev", dependencies=["T1"], priority=1,
            estimated_hours=8, description="REST endpoints",
        )
    )  # fmt: skip
    t3 = await stub.CreateTask(pb.CreateTaskRequest(story_id=story_id, title="Load test", role="QA"))
    decision = await stub.AddProjectDecision(
        pb.AddProjectDecisionRequest(
            story_id=story_id, decision_type="architecture", title="Use Adyen", rationale="lower fees",
            alternatives_considered="Stripe", metadata={"ticket": "PAY-7"},
        ),
        metadata=(("fleet-actor", "alice"),),
    )  # fmt: skip
    update = await stub.UpdateContext(
        pb.UpdateContextRequest(
            story_id=story_id,
            task_id="T1",
            role="DEV",
            timestamp=datetime.now(UTC).isoformat(),
            changes=[
                change("UPDATE", "DECISION", {"subtask_id": "T2"}, decision.decision_id),
                change("update", "subtask", {"status": "IN_PROGRESS"}, reason="started"),
                change("CREATE", "MILESTONE", {"kind": "KICKOFF"}, "M1", "build started"),
                change("CREATE", "SUMMARY", {"summary": "Form in progress."}),
            ],
        )
    )
    transition = await stub.TransitionPhase(
        pb.TransitionPhaseRequest(story_id=story_id, from_phase="design", to_phase="Build", rationale="approved")
    )
    return {
        "id": story_id, "tasks": (t1, t2, t3), "decision": decision, "update": update, "transition": transition,
    }  # fmt: skip


async def test_commands_answer_with_versions(gateway: Gateway, story: dict) -> None:
    t1, t2, t3 = story["tasks"]
    assert [(t.task_id, t.status, t.version) for t in (t1, t2)] == [("T1", "PENDING", 2), ("T2", "PENDING", 3)]
    assert t3.task_id and t3.story_id == story["id"] and t3.version == 4
    assert story["decision"].decision_id and story["decision"].version == 5
    assert story["update"].version == 9 and story["update"].warnings == []
    transition = story["transition"]
    assert (transition.current_phase, transition.version, transition.story_id) == ("BUILD", 10, story["id"])

    history = await gateway.client.history(story["id"])
    assert datetime.fromisoformat(transition.transitioned_at) == history[-1].timestamp
    batch_ids = [e.event_id for e in history if 6 <= e.version <= 9]
    assert story["update"].hash == hashlib.sha256("\n".join(batch_ids).encode()).hexdigest()
    assert len({e.timestamp for e in history[5:9]}) == 1  # one atomic append
    state = await gateway.client.get_story(story["id"])
    decision = state.decisions[story["decision"].decision_id]
    assert (decision.decided_by, decision.alternatives, dict(decision.metadata)) == (
        "alice",
        (Alternative("Stripe"),),
        {"ticket": "PAY-7"},
    )
    assert state.subtasks["T2"].estimated_hours == 8 and state.subtasks["T1"].status == "IN_PROGRESS"
    assert history[5].actor == "DEV" and state.last_summary == "Form in progress."


async def test_create_story_reports_the_context(gateway: Gateway) -> None:
    response = await gateway.stub.CreateStory(
        pb.CreateStoryRequest(story_id="gw-create-" + str(time.time_ns()), title="t", initial_phase="build")
    )
    assert (response.context_id, response.current_phase, response.version) == (response.story_id, "BUILD", 1)


async def test_get_context_reads_the_projected_story(gateway: Gateway, story: dict) -> None:
    version = story["transition"].version
    response = await gateway.stub.GetContext(
        pb.GetContextRequest(story_id=story["id"], role="dev", phase="build", min_version=version), timeout=20
    )
    assert response.version == str(version)
    assert list(response.scopes) == [s.value for s in ScopePolicy.load().scope("DEV", "BUILD").sections]
    assert response.blocks.context == response.context and response.blocks.tools == TOOLS_TEXT
    assert "DEV agent" in response.blocks.system
    assert "[T2] Payment API | DEV | PENDING | P1 | depends on T1" in response.context
    assert "Load test" not in response.context  # QA's task
    assert "Use Adyen" in response.context  # it impacts T2
    assert response.token_count == -(-len(response.context) // 4) and not response.trimmed_scopes

    # phase left empty: the story's current one; a budget trims the least important sections
    qa = await gateway.stub.GetContext(pb.GetContextRequest(story_id=story["id"], role="QA", token_budget=70))
    assert qa.trimmed_scopes and qa.token_count <= 70
    assert {*qa.scopes, *qa.trimmed_scopes} == {s.value for s in ScopePolicy.load().scope("QA", "BUILD").sections}


async def test_get_context_with_a_focus_subtask(gateway: Gateway, story: dict) -> None:
    response = await gateway.stub.GetContext(
        pb.GetContextRequest(story_id=story["id"], role="DEV", phase="TEST", subtask_id="T1")
    )
    assert "[T1] (focus) Payment form | IN_PROGRESS" in response.context


async def test_validate_scope(gateway: Gateway) -> None:
    ok = await gateway.stub.ValidateScope(
        pb.ValidateScopeRequest(
            role="dev", phase="test", provided_scopes=["CASE_HEADER", "plan_header", "SUBTASKS_ROLE_MIN"]
        )
    )
    assert ok.allowed and not ok.missing and not ok.extra
    wrong = await gateway.stub.ValidateScope(
        pb.ValidateScopeRequest(role="QA", phase="DOCS", provided_scopes=["CASE_HEADER", "SUBTASKS_ROLE"])
    )
    assert not wrong.allowed and "PLAN_HEADER" in wrong.missing and list(wrong.extra) == ["SUBTASKS_ROLE"]
    assert wrong.reason


async def test_rehydrate_session_builds_packs_and_persists_the_bundle(gateway: Gateway, story: dict) -> None:
    version = story["transition"].version
    response = await gateway.stub.RehydrateSession(
        pb.RehydrateSessionRequest(
            case_id=story["id"], roles=["dev", "QA", "DEV"], include_timeline=True, include_summaries=True,
            timeline_events=3, persist_bundle=True, ttl_seconds=120, min_version=version,
        ),
        timeout=20,
    )  # fmt: skip
    assert response.case_id == story["id"] and response.version == version
    assert abs(response.generated_at_ms - time.time() * 1000) < 60_000
    assert sorted(response.packs) == ["DEV", "QA"] and list(response.stats.roles) == ["DEV", "QA"]
    stats = response.stats
    assert (stats.decisions, stats.decision_edges, stats.impacts, stats.events) == (1, 0, 1, version)
    dev = response.packs["DEV"]
    assert [s.subtask_id for s in dev.subtasks] == ["T2", "T1"]  # priority first
    assert dev.plan_header.total_subtasks == 3 and dev.case_header.title == "Checkout flow"
    assert [d.id for d in dev.decisions] == [story["decision"].decision_id]
    assert [m.event_type for m in dev.milestones] == ["milestone_recorded", "summary_recorded", "phase_transitioned"]
    assert dev.last_summary == "Form in progress." and dev.token_budget_hint > 0
    assert len(response.packs["QA"].subtasks) == 3

    async with valkey_async.Valkey.from_url(gateway.settings.valkey_url) as valkey:
        stored = pb.RehydrateSessionResponse.FromString(await valkey.get(response.bundle_key))
        assert 0 < await valkey.ttl(response.bundle_key) <= 120
    assert stored.case_id == story["id"] and stored.packs["DEV"] == dev

    everyone = await gateway.stub.RehydrateSession(pb.RehydrateSessionRequest(case_id=story["id"]))
    assert sorted(everyone.packs) == sorted(ScopePolicy.load().agent_roles)
    assert not everyone.bundle_key and all(not p.last_summary for p in everyone.packs.values())
    assert [m.event_type for m in everyone.packs["ARCHITECT"].milestones] == ["KICKOFF"]  # recorded milestones


async def test_graph_relationships(gateway: Gateway, story: dict) -> None:
    sid = story["id"]
    around_story = await gateway.stub.GetGraphRelationships(
        pb.GetGraphRelationshipsRequest(node_id=sid, node_type="story", min_version=story["transition"].version),
        timeout=20,
    )
    assert around_story.success and around_story.version == story["transition"].version
    assert (around_story.node.id, around_story.node.type, around_story.node.title) == (sid, "Story", "Checkout flow")
    assert around_story.node.properties["phase"] == "BUILD" and list(around_story.node.labels) == ["Story"]
    neighbours = {n.id: n for n in around_story.neighbors}
    assert {f"{sid}/T1", f"{sid}/T2", f"{sid}/{story['decision'].decision_id}", f"{sid}/M1"} <= set(neighbours)
    assert neighbours[f"{sid}/T2"].type == "Task" and neighbours[f"{sid}/T2"].properties["priority"] == "1"
    edges = {(r.from_node_id, r.type, r.to_node_id) for r in around_story.relationships}
    assert (sid, "HAS_SUBTASK", f"{sid}/T1") in edges
    assert (f"{sid}/T2", "DEPENDS_ON", f"{sid}/T1") in edges  # two hops away (default depth 2)

    task = await gateway.stub.GetGraphRelationships(
        pb.GetGraphRelationshipsRequest(node_id=f"{sid}/T1", node_type="TASK", depth=1)
    )
    assert {(r.from_node_id, r.type, r.to_node_id) for r in task.relationships} == {
        (sid, "HAS_SUBTASK", f"{sid}/T1"), (f"{sid}/T2", "DEPENDS_ON", f"{sid}/T1"),
    }  # fmt: skip
    capped = await gateway.stub.GetGraphRelationships(
        pb.GetGraphRelationshipsRequest(node_id=f"{sid}/{story['decision'].decision_id}", node_type="Decision", depth=9)
    )
    assert "capped at 3" in capped.message and capped.node.type == "Decision"


async def test_update_context_skips_what_it_cannot_apply_and_appends_the_rest_as_one_batch(
    gateway: Gateway,
) -> None:
    sid = await new_story(gateway.stub)
    before = await version_of(gateway, sid)
    changes = [
        change("CREATE", "SUBTASK", {"title": "Form"}, "T7"),
        change("DELETE", "DECISION", {}, "D1"),
        change("UPDATE", "SUBTASK", {"status": "IN_PROGRESS"}, "T7"),  # later changes see the earlier ones
        change("CREATE", "EPIC", {}),
    ]
    response = await gateway.stub.UpdateContext(pb.UpdateContextRequest(story_id=sid, role="DEV", changes=changes))
    assert response.version == before + 2
    assert [w.split(" skipped")[0] for w in response.warnings] == ["changes[1].operation", "changes[3].entity_type"]
    appended = await gateway.client.history(sid, before + 1)
    assert [e.event_type for e in appended] == ["subtask_created", "subtask_updated"]
    assert len({e.command_id for e in appended}) == 1  # one command: one atomic batch


async def test_idempotency_key_and_clock_skew_warning(gateway: Gateway) -> None:
    sid = await new_story(gateway.stub)
    request = pb.UpdateContextRequest(
        story_id=sid, role="QA", changes=[change("CREATE", "SUMMARY", {"summary": "s"})],
        timestamp=(datetime.now(UTC) - timedelta(hours=2)).isoformat(),
    )  # fmt: skip
    key = (("idempotency-key", f"upd-{sid}"),)
    first = await gateway.stub.UpdateContext(request, metadata=key)
    again = await gateway.stub.UpdateContext(request, metadata=key)
    assert (again.version, again.hash) == (first.version, first.hash) == (2, first.hash)
    assert any("server's clock" in w for w in first.warnings)
    assert any("already applied" in w for w in again.warnings)
    assert await version_of(gateway, sid) == 2

    task = pb.CreateTaskRequest(story_id=sid, title="generated id", role="DEV")
    created = await gateway.stub.CreateTask(task, metadata=(("idempotency-key", f"task-{sid}"),))
    retried = await gateway.stub.CreateTask(task, metadata=(("idempotency-key", f"task-{sid}"),))
    assert retried.task_id == created.task_id and retried.version == created.version == 3


async def test_watch_story_streams_new_events(gateway: Gateway) -> None:
    sid = await new_story(gateway.stub)
    live = gateway.stub.WatchStory(pb.WatchStoryRequest(story_id=sid))
    await live.initial_metadata()  # subscribed from here on
    created = await gateway.stub.CreateTask(pb.CreateTaskRequest(story_id=sid, task_id="T1", title="x", role="DEV"))
    event = await asyncio.wait_for(live.read(), timeout=10)
    assert (event.version, event.event_type, event.story_id) == (created.version, "subtask_created", sid)
    assert json.loads(event.payload_json)["subtask_id"] == "T1" and event.command_id and event.event_id
    live.cancel()

    replay = gateway.stub.WatchStory(pb.WatchStoryRequest(story_id=sid, from_version=2))
    await replay.initial_metadata()
    await gateway.stub.CreateTask(pb.CreateTaskRequest(story_id=sid, task_id="T2", title="y", role="DEV"))
    versions = [(await asyncio.wait_for(replay.read(), timeout=10)).version for _ in range(2)]
    assert versions == [2, 3]
    replay.cancel()
    assert await replay.code() == grpc.StatusCode.CANCELLED


async def test_read_your_writes_wait_honours_the_deadline(gateway: Gateway, story: dict) -> None:
    started = time.monotonic()
    error = await rpc_error(
        gateway.stub.GetContext(pb.GetContextRequest(story_id=story["id"], role="DEV", min_version=10_000), timeout=1.0)
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 3


async def test_without_a_token_configured_any_caller_is_served(gateway: Gateway, story: dict) -> None:
    for metadata in ((), (("authorization", "Bearer whatever"),)):
        response = await gateway.stub.ValidateScope(pb.ValidateScopeRequest(role="QA", phase="TEST"), metadata=metadata)
        assert not response.allowed
