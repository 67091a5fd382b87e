"""Bad input for every request type, and a backend stopped under the gateway: precise statuses, never UNKNOWN."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from fleet_actors.devstack import LocalStack
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from tests.conftest import unique_id
from tests.gateway.conftest import Gateway, error_field, new_story, rpc_error

#: one unknown story for every NOT_FOUND case: each story id asked for costs an actor
MISSING = unique_id("gw-missing")

Call = Callable[[pb_grpc.ContextServiceStub, str], Awaitable[Any]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def change(operation: str = "CREATE", entity: str = "SUBTASK", payload: Any = None, entity_id: str = "T9"):
    text = payload if isinstance(payload, str) else json.dumps(payload or {"title": "t"})
    return pb.ContextChange(operation=operation, entity_type=entity, entity_id=entity_id, payload=text)


def pick(given: str | None, story: str) -> str:
    return story if given is None else given


def get_context(sid: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.GetContext(
        pb.GetContextRequest(story_id=pick(sid, story), **{"role": "DEV", **fields})
    )


def update(sid: str | None = None, **fields: Any) -> Call:
    defaults = {"role": "DEV", "changes": [change()]}
    return lambda stub, story: stub.UpdateContext(
        pb.UpdateContextRequest(story_id=pick(sid, story), **{**defaults, **fields})
    )


def rehydrate(sid: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.RehydrateSession(pb.RehydrateSessionRequest(case_id=pick(sid, story), **fields))


def validate(**fields: Any) -> Call:
    return lambda stub, story: stub.ValidateScope(
        pb.ValidateScopeRequest(**{"role": "DEV", "phase": "BUILD", **fields})
    )


def create_story(**fields: Any) -> Call:
    defaults = {"story_id": MISSING, "title": "t"}
    return lambda stub, story: stub.CreateStory(pb.CreateStoryRequest(**{**defaults, **fields}))


def create_task(sid: str | None = None, metadata: tuple = (), **fields: Any) -> Call:
    defaults = {"task_id": "T9", "title": "t", "role": "DEV"}
    return lambda stub, story: stub.CreateTask(
        pb.CreateTaskRequest(story_id=pick(sid, story), **{**defaults, **fields}), metadata=metadata
    )


def decide(sid: str | None = None, **fields: Any) -> Call:
    defaults = {"title": "t", "rationale": "r"}
    return lambda stub, story: stub.AddProjectDecision(
        pb.AddProjectDecisionRequest(story_id=pick(sid, story), **{**defaults, **fields})
    )


def transition(sid: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.TransitionPhase(
        pb.TransitionPhaseRequest(story_id=pick(sid, story), **{"to_phase": "BUILD", **fields})
    )


def graph(node_id: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.GetGraphRelationships(
        pb.GetGraphRelationshipsRequest(
            node_id=story if node_id is None else node_id, **{"node_type": "Story", **fields}
        )
    )


def at_time(sid: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.GetContextAtTime(
        pb.GetContextAtTimeRequest(story_id=pick(sid, story), **{"role": "DEV", **fields})
    )


def history(sid: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.GetStoryHistory(pb.GetStoryHistoryRequest(story_id=pick(sid, story), **fields))


def watch(sid: str | None = None, **fields: Any) -> Call:
    return lambda stub, story: stub.WatchStory(pb.WatchStoryRequest(story_id=pick(sid, story), **fields)).read()


CASES: list[tuple[str, Call, grpc.StatusCode, str]] = [
    ("context-story-id", get_context("bad id"), INVALID, "story_id"),
    ("context-role", get_context(role=""), INVALID, "role"),
    ("context-phase", get_context(phase="P" * 65), INVALID, "phase"),
    ("context-budget", get_context(token_budget=-1), INVALID, "token_budget"),
    ("context-subtask-id", get_context(subtask_id="a b"), INVALID, "subtask_id"),
    ("context-min-version", get_context(min_version=-1), INVALID, "min_version"),
    ("context-missing", get_context(MISSING), NOT_FOUND, "story_id"),
    ("update-story-id", update(""), INVALID, "story_id"),
    ("update-role", update(role="R" * 65), INVALID, "role"),
    ("update-task-id", update(task_id="a/b"), INVALID, "task_id"),
    ("update-timestamp", update(timestamp="yesterday"), INVALID, "timestamp"),
    ("update-too-many", update(changes=[change()] * 101), INVALID, "changes"),
    ("update-missing", update(MISSING), NOT_FOUND, "story_id"),
    ("rehydrate-case-id", rehydrate("bad id"), INVALID, "case_id"),
    ("rehydrate-role", rehydrate(roles=["DEV", ""]), INVALID, "roles[1]"),
    ("rehydrate-timeline", rehydrate(timeline_events=-1), INVALID, "timeline_events"),
    ("rehydrate-ttl", rehydrate(ttl_seconds=-1), INVALID, "ttl_seconds"),
    ("rehydrate-min-version", rehydrate(min_version=-1), INVALID, "min_version"),
    ("rehydrate-missing", rehydrate(MISSING), NOT_FOUND, "case_id"),
    ("scope-role", validate(role=""), INVALID, "role"),
    ("scope-phase", validate(phase="P" * 65), INVALID, "phase"),
    ("story-id", create_story(story_id="a.b"), INVALID, "story_id"),
    ("story-title", create_story(title=""), INVALID, "title"),
    ("story-phase", create_story(initial_phase="LAUNCH"), INVALID, "initial_phase"),
    ("story-description", create_story(description="x" * 10_001), INVALID, "description"),
    ("init-title", lambda stub, story: stub.InitializeProjectContext(
        pb.InitializeProjectContextRequest(story_id=MISSING, title="")), INVALID, "title"),
    ("story-exists", lambda stub, story: stub.CreateStory(pb.CreateStoryRequest(story_id=story, title="again")),
     grpc.StatusCode.ALREADY_EXISTS, "story_id"),
    ("task-story-id", create_task("bad id"), INVALID, "story_id"),
    ("task-id", create_task(task_id="a b"), INVALID, "task_id"),
    ("task-title", create_task(title=""), INVALID, "title"),
    ("task-role", create_task(role=""), INVALID, "role"),
    ("task-priority", create_task(priority=9), INVALID, "priority"),
    ("task-hours", create_task(estimated_hours=-1), INVALID, "estimated_hours"),
    ("task-dependency", create_task(dependencies=["T404"]), PRECONDITION, "dependencies"),
    ("task-exists", create_task(task_id="T1"), PRECONDITION, "task_id"),
    ("task-idempotency-key", create_task(metadata=(("idempotency-key", "a b"),)), INVALID, "idempotency-key"),
    ("task-empty-idempotency-key", create_task(metadata=(("idempotency-key", ""),)), INVALID, "idempotency-key"),
    ("task-actor", create_task(metadata=(("fleet-actor", "x" * 65),)), INVALID, "fleet-actor"),
    ("task-missing", create_task(MISSING), NOT_FOUND, "story_id"),
    ("decision-title", decide(title=""), INVALID, "title"),
    ("decision-rationale", decide(rationale=" "), INVALID, "rationale"),
    ("decision-type", decide(decision_type="not a type!"), INVALID, "decision_type"),
    ("decision-metadata", decide(metadata={f"k{i}": "v" for i in range(33)}), INVALID, "metadata"),
    ("decision-alternatives", decide(alternatives_considered="x" * 10_001), INVALID, "alternatives_considered"),
    ("decision-missing", decide(MISSING), NOT_FOUND, "story_id"),
    ("phase-to", transition(to_phase=""), INVALID, "to_phase"),
    ("phase-from-invalid", transition(from_phase="nope"), INVALID, "from_phase"),
    ("phase-from-stale", transition(from_phase="BUILD", to_phase="TEST"), PRECONDITION, "from_phase"),
    ("phase-skip", transition(to_phase="TEST"), PRECONDITION, "to_phase"),
    ("phase-missing", transition(MISSING), NOT_FOUND, "story_id"),
    ("graph-type", graph(node_type=""), INVALID, "node_type"),
    ("graph-project", graph(node_type="Project"), NOT_FOUND, "node_type"),
    ("graph-epic", graph(node_type="epic"), NOT_FOUND, "node_type"),
    ("graph-story-id", graph("a b"), INVALID, "node_id"),
    ("graph-task-id", graph("a b", node_type="Task"), INVALID, "node_id"),
    ("graph-plain-task-missing", graph("T404", node_type="Task"), NOT_FOUND, "node_id"),
    ("graph-depth", graph(depth=-1), INVALID, "depth"),
    ("graph-min-version", graph(min_version=-1), INVALID, "min_version"),
    ("graph-missing", graph(MISSING), NOT_FOUND, "node_id"),
    ("at-no-point", at_time(), INVALID, "point"),
    ("at-version", at_time(version=0), INVALID, "version"),
    ("at-timestamp", at_time(at=Timestamp(seconds=1, nanos=-1)), INVALID, "at"),
    ("at-before-creation", at_time(at=Timestamp(seconds=1)), NOT_FOUND, "story_id"),
    ("at-role", at_time(role="", version=1), INVALID, "role"),
    ("at-missing", at_time(MISSING, version=1), NOT_FOUND, "story_id"),
    ("history-story-id", history("bad id"), INVALID, "story_id"),
    ("history-limit", history(limit=-1), INVALID, "limit"),
    ("history-from", history(from_version=-1), INVALID, "from_version"),
    ("history-token", history(page_token="garbage"), INVALID, "page_token"),
    ("history-missing", history(MISSING), NOT_FOUND, "story_id"),
    ("watch-story-id", watch("bad id"), INVALID, "story_id"),
    ("watch-from", watch(from_version=-1), INVALID, "from_version"),
    ("watch-missing", watch(MISSING), NOT_FOUND, "story_id"),
]  # fmt: skip


@pytest.fixture(scope="module")
async def story(gateway: Gateway) -> str:
    """A story in DESIGN with subtask T1, projected to version 2."""
    story_id = await new_story(gateway.stub)
    await gateway.stub.CreateTask(pb.CreateTaskRequest(story_id=story_id, task_id="T1", title="Form", role="DEV"))
    return story_id


@pytest.mark.parametrize(("call", "code", "field"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_bad_input_gets_a_precise_status_naming_the_field(
    gateway: Gateway, story: str, call: Call, code: grpc.StatusCode, field: str
) -> None:
    error = await rpc_error(call(gateway.stub, story))
    assert (error.code(), error_field(error)) == (code, field), error.details()
    assert error.details() and "Traceback" not in error.details()


def test_every_request_type_has_bad_input_cases() -> None:
    service = pb.DESCRIPTOR.services_by_name["ContextService"]
    prefixes = {
        "GetContext": "context", "UpdateContext": "update", "RehydrateSession": "rehydrate", "ValidateScope": "scope",
        "CreateStory": "story", "CreateTask": "task", "AddProjectDecision": "decision", "TransitionPhase": "phase",
        "GetGraphRelationships": "graph", "GetContextAtTime": "at", "GetStoryHistory": "history", "WatchStory": "watch",
        "InitializeProjectContext": "init",
    }  # fmt: skip
    assert set(prefixes) == set(service.methods_by_name)
    assert {name.split("-")[0] for name, *_ in CASES} == set(prefixes.values())


async def test_rejected_commands_appended_nothing(gateway: Gateway, story: str) -> None:
    assert (await gateway.client.get_story(story)).version == 2


async def test_a_stopped_graph_database_is_unavailable_until_it_returns(
    gateway: Gateway, story: str, local_stack: LocalStack
) -> None:
    request = pb.GetGraphRelationshipsRequest(node_id=story, node_type="Story", min_version=2)
    assert (await gateway.stub.GetGraphRelationships(request, timeout=20)).success
    arcadedb = local_stack.arcadedb
    await asyncio.to_thread(arcadedb.stop)
    try:
        error = await rpc_error(gateway.stub.GetGraphRelationships(request, timeout=20))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "graph database" in error.details()
        # the context document lives in Valkey: agents keep getting their context while the graph is down
        context = await gateway.stub.GetContext(pb.GetContextRequest(story_id=story, role="QA"), timeout=20)
        assert context.version == "2"
        # commands need the event log only, so they keep working
        task = pb.CreateTaskRequest(story_id=story, task_id="T2", title="API", role="DEV")
        assert (await gateway.stub.CreateTask(task)).version == 3
    finally:
        await asyncio.to_thread(lambda: arcadedb.start().wait_ready())
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            response = await gateway.stub.GetGraphRelationships(request.__class__(node_id=story, node_type="Story"))
            if response.version == 3:
                break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert asyncio.get_running_loop().time() < deadline, "the gateway did not recover"
        await asyncio.sleep(0.2)
