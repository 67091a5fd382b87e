"""Items 7 and 8: decision authorship from metadata, NOT_FOUND wording, plain task ids in the graph."""

from __future__ import annotations

import grpc

from tests.compat.conftest import Compat
from tests.conftest import unique_id
from tests.gateway.conftest import error_field, rpc_error


async def test_add_project_decision_takes_its_author_and_role_from_metadata(compat: Compat) -> None:
    pb = compat.pb
    sid = await compat.new_story()
    metadata = {"winner": "agent-dev-2", "role": "DEV", "council": "dev-council", "score": "0.92"}
    added = await compat.stub.AddProjectDecision(
        pb.AddProjectDecisionRequest(story_id=sid, decision_type="IMPLEMENTATION", title="Use a circuit breaker",
                                     rationale="downstream flaps", metadata=metadata)
    )  # fmt: skip
    (event,) = await compat.client.history(sid, 2)
    assert (event.payload.decided_by, event.actor) == ("agent-dev-2 (DEV)", "DEV")
    assert dict(event.payload.metadata) == metadata  # kept as sent
    packs = await compat.stub.RehydrateSession(
        pb.RehydrateSessionRequest(case_id=sid, roles=["architect"], min_version=added.version)
    )
    (decision,) = packs.packs["ARCHITECT"].decisions
    assert (decision.id, decision.decided_by) == (added.decision_id, "agent-dev-2 (DEV)")
    context = await compat.stub.GetContext(pb.GetContextRequest(story_id=sid, role="architect", phase="DESIGN"))
    (line,) = [line for line in context.context.splitlines() if line.startswith(f"- [{added.decision_id}]")]
    assert line.endswith("by agent-dev-2 (DEV)")
    plain = await compat.stub.AddProjectDecision(
        pb.AddProjectDecisionRequest(story_id=sid, title="No author", rationale="none given"),
        metadata=(("fleet-actor", "planner-ui"),),
    )
    (event,) = await compat.client.history(sid, plain.version)
    assert event.payload.decided_by == "planner-ui"


async def test_not_found_says_not_found(compat: Compat) -> None:
    pb, stub = compat.pb, compat.stub
    missing = unique_id("compat-missing")
    calls = [
        stub.GetContext(pb.GetContextRequest(story_id=missing, role="developer", phase="PLAN")),
        stub.CreateTask(pb.CreateTaskRequest(story_id=missing, task_id="T1", title="t", role="developer")),
        stub.AddProjectDecision(pb.AddProjectDecisionRequest(story_id=missing, title="t", rationale="r")),
        stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=missing, to_phase="BUILD")),
        stub.RehydrateSession(pb.RehydrateSessionRequest(case_id=missing)),
        stub.GetGraphRelationships(pb.GetGraphRelationshipsRequest(node_id=missing, node_type="Story")),
        stub.GetGraphRelationships(pb.GetGraphRelationshipsRequest(node_id="P1", node_type="Project")),
    ]
    for call in calls:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND and "not found" in error.details(), error.details()


async def test_graph_relationships_accepts_a_plain_task_id_when_it_is_unique(compat: Compat) -> None:
    pb = compat.pb
    shared, unique = unique_id("T-shared"), unique_id("T-own")
    first, second = await compat.new_story(), await compat.new_story()
    for sid in (first, second):
        await compat.update(sid, compat.change("CREATE", "SUBTASK", {"title": "Shared"}, shared))
    last = await compat.update(first, compat.change("CREATE", "SUBTASK", {"title": "Own", "dependencies": [shared]},
                                                    unique))  # fmt: skip
    await compat.stub.GetContext(pb.GetContextRequest(story_id=second, role="qa", min_version=2))
    found = await compat.stub.GetGraphRelationships(
        pb.GetGraphRelationshipsRequest(node_id=unique, node_type="Task", depth=1, min_version=last.version)
    )
    assert (found.node.id, found.node.type, found.node.title) == (f"{first}/{unique}", "Task", "Own")
    assert (f"{first}/{unique}", "DEPENDS_ON", f"{first}/{shared}") in {
        (r.from_node_id, r.type, r.to_node_id) for r in found.relationships
    }
    ambiguous = await rpc_error(
        compat.stub.GetGraphRelationships(pb.GetGraphRelationshipsRequest(node_id=shared, node_type="Task"))
    )
    assert (ambiguous.code(), error_field(ambiguous)) == (grpc.StatusCode.INVALID_ARGUMENT, "node_id")
    assert f"{first}/{shared}" in ambiguous.details() and f"{second}/{shared}" in ambiguous.details()
    qualified = await compat.stub.GetGraphRelationships(
        pb.GetGraphRelationshipsRequest(node_id=f"{second}/{shared}", node_type="Task")
    )
    assert qualified.success and qualified.node.id == f"{second}/{shared}"
