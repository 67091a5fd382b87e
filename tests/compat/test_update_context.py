"""Item 2: UpdateContext payloads in the shapes the fleet's callers send, through stubs built from protos/."""

from __future__ import annotations

import json

import grpc

from tests.compat.conftest import Compat
from tests.gateway.conftest import error_field, rpc_error

#: a deliberation's record, as the orchestrator attaches it to a decision (~10 kB)
DATA = json.dumps({"proposals": [{"agent": f"dev-{i}", "text": "x" * 1_000} for i in range(10)], "votes": 7})


async def test_each_caller_shape_becomes_events_and_keeps_every_key(compat: Compat) -> None:
    sid = await compat.new_story()
    c = compat.change
    response = await compat.update(
        sid,
        c("CREATE", "DECISION", {"title": "Cache reads in Valkey", "status": "PROPOSED", "data": DATA}, "D1"),
        c("UPDATE", "DECISION", {"status": "RESOLVED"}, "D1", reason="council agreed"),
        c("CREATE", "MILESTONE", {"event": "deliberation_done"}),
        c("CREATE", "MILESTONE", {"type": "REVIEW", "title": "architect review passed"}),
        c(
            "CREATE",
            "SUBTASK",
            {"sub_id": "T1", "title": "Cache layer", "type": "backend", "plan_id": "P-9", "last_status": "PENDING"},
        ),
        c("CREATE", "SUBTASK", {"sub_id": "T2", "title": "Metrics", "type": "ops", "plan_id": "P-9"}),
        c("UPDATE", "SUBTASK", {"last_status": "COMPLETED"}, "T1"),
        c("UPDATE", "SUBTASK", {"status": "COMPLETED"}, "T2"),
        c("CREATE", "PLAN", {"version": 2, "status": "APPROVED", "approved_by": "po"}, "P-9"),
        c("", ""),
    )
    history = await compat.client.history(sid, 2)
    assert response.version == 1 + len(history)
    shown = [w.split(":")[0] for w in response.warnings]
    assert shown == ["changes[6]", "changes[7]", "changes[9] skipped"], list(response.warnings)
    assert "PENDING -> IN_PROGRESS -> DONE" in response.warnings[0] and "empty" in response.warnings[2]
    types = [e.event_type for e in history]
    assert types == [
        "decision_added", "decision_status_changed", "decision_status_changed", "milestone_recorded",
        "milestone_recorded", "subtask_created", "subtask_created", "subtask_updated", "subtask_updated",
        "subtask_updated", "subtask_updated", "plan_versioned",
    ]  # fmt: skip
    assert len({e.command_id for e in history}) == 1  # one atomic batch
    added, proposed, resolved = (e.payload for e in history[:3])
    assert added.properties == {"data": DATA} and (proposed.status, resolved.status) == ("PROPOSED", "RESOLVED")
    assert resolved.note == "council agreed"
    assert [(e.payload.kind, e.payload.description) for e in history[3:5]] == [
        ("DELIBERATION_DONE", ""),
        ("REVIEW", "architect review passed"),
    ]
    assert history[5].payload.properties == {"type": "backend", "plan_id": "P-9"}
    assert history[11].payload.properties == {"approved_by": "po"}
    state = await compat.client.get_story(sid)
    assert state.decisions["D1"].status == "RESOLVED"
    assert {k: s.status for k, s in state.subtasks.items()} == {"T1": "DONE", "T2": "DONE"}
    assert (state.plan_id, state.plan_version, state.plan_status) == ("P-9", 2, "APPROVED")
    graph = await compat.stub.GetGraphRelationships(
        compat.pb.GetGraphRelationshipsRequest(node_id=f"{sid}/D1", node_type="Decision", min_version=response.version)
    )
    assert graph.node.properties["status"] == "RESOLVED"  # the read models follow the status events
    context = await compat.stub.GetContext(
        compat.pb.GetContextRequest(story_id=sid, role="qa", phase="TEST", min_version=response.version)
    )
    assert "[D1] Cache reads in Valkey (ARCHITECTURE, RESOLVED)" in context.context
    assert "Plan P-9 version 2, APPROVED" in context.context
    packs = await compat.stub.RehydrateSession(
        compat.pb.RehydrateSessionRequest(case_id=sid, roles=["qa"], min_version=response.version)
    )
    header = packs.packs["QA"].plan_header
    assert (header.plan_id, header.version, header.status, header.completed_subtasks) == ("P-9", 2, "APPROVED", 2)


async def test_what_cannot_be_applied_is_skipped_and_the_rest_appended_together(compat: Compat) -> None:
    sid = await compat.new_story()
    before = await compat.version(sid)
    c = compat.change
    response = await compat.update(
        sid,
        c("CREATE", "SUBTASK", {"title": "Form"}, "T1"),
        c("DELETE", "SUBTASK", {}, "T1"),
        c("CREATE", "EPIC", {"title": "Payments"}),
        c("CREATE", "DECISION", "{not json", "D1"),
        c("UPDATE", "SUBTASK", {"status": "REVIEWING"}, "T1"),
        c("UPDATE", "DECISION", {"subtask_id": "T1"}, "D404"),
        c("UPDATE", "SUBTASK", {"status": "IN_PROGRESS"}, "T1"),
    )
    assert response.version == before + 2 and response.hash
    assert [w.split(" skipped: ")[0] for w in response.warnings] == [
        "changes[1].operation", "changes[2].entity_type", "changes[3].payload", "changes[4].payload.status",
        "changes[5].entity_id",
    ]  # fmt: skip
    reasons = [w.split(" skipped: ")[1] for w in response.warnings]
    assert "append-only" in reasons[0] and "EPIC" in reasons[1] and "JSON" in reasons[2]
    assert "REVIEWING" in reasons[3] and "D404" in reasons[4]
    appended = await compat.client.history(sid, before + 1)
    assert [e.event_type for e in appended] == ["subtask_created", "subtask_updated"]
    assert len({e.command_id for e in appended}) == 1


async def test_nothing_applicable_appends_nothing_and_says_so(compat: Compat) -> None:
    sid = await compat.new_story()
    before = await compat.version(sid)
    response = await compat.update(sid, compat.change("DELETE", "DECISION", {}, "D1"))
    assert (response.version, response.hash) == (before, "")
    assert response.warnings[-1].startswith("nothing was appended")
    empty = await compat.update(sid)
    assert (empty.version, list(empty.warnings)) == (before, ["no changes given"])
    assert await compat.version(sid) == before


async def test_all_or_nothing_refuses_the_whole_request_naming_the_change(strict: Compat) -> None:
    sid = await strict.new_story()
    before = await strict.version(sid)
    c = strict.change
    at_the_gate = await rpc_error(
        strict.update(sid, c("CREATE", "SUBTASK", {"title": "Form"}, "T1"), c("DELETE", "DECISION", {}, "D1"))
    )
    assert (at_the_gate.code(), error_field(at_the_gate)) == (grpc.StatusCode.INVALID_ARGUMENT, "changes[1].operation")
    in_the_story = await rpc_error(
        strict.update(
            sid, c("CREATE", "SUBTASK", {"title": "Form"}, "T1"), c("UPDATE", "DECISION", {"subtask_id": "T1"}, "D9")
        )
    )
    assert (in_the_story.code(), error_field(in_the_story)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "changes[1].entity_id",
    )
    assert "changes[1]" in in_the_story.details() and "D9" in in_the_story.details()
    empty = await rpc_error(strict.update(sid))
    assert (empty.code(), error_field(empty)) == (grpc.StatusCode.INVALID_ARGUMENT, "changes")
    assert await strict.version(sid) == before


async def test_bad_requests_still_get_precise_codes_and_append_nothing(compat: Compat) -> None:
    pb = compat.pb
    change = compat.change("CREATE", "SUBTASK", {"title": "Form"}, "T1")
    bad_id = await rpc_error(compat.stub.UpdateContext(pb.UpdateContextRequest(story_id="a b", changes=[change])))
    assert (bad_id.code(), error_field(bad_id)) == (grpc.StatusCode.INVALID_ARGUMENT, "story_id")
    missing = await rpc_error(
        compat.stub.UpdateContext(pb.UpdateContextRequest(story_id="compat-nope", changes=[change]))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "not found" in missing.details()
    sid = await compat.new_story()
    before = await compat.version(sid)
    too_many = await rpc_error(compat.update(sid, *([change] * 101)))
    assert (too_many.code(), error_field(too_many)) == (grpc.StatusCode.INVALID_ARGUMENT, "changes")
    skewed = pb.UpdateContextRequest(story_id=sid, role="developer", changes=[change], timestamp="yesterday")
    bad_time = await rpc_error(compat.stub.UpdateContext(skewed))
    assert (bad_time.code(), error_field(bad_time)) == (grpc.StatusCode.INVALID_ARGUMENT, "timestamp")
    assert await compat.version(sid) == before
