"""Temporal queries and the audit trail, checked against replays of the story's own log."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.gateway.context_assembly import assemble_context, story_event
from fleet_actors.gateway.context_changes import TOOLS_TEXT
from fleet_actors.gateway.scope_policy import ScopePolicy
from fleet_actors.proto import context_service_pb2 as pb
from tests.gateway.conftest import Gateway, new_story, rpc_error

ROLES = ("ARCHITECT", "DEV", "QA", "DEVOPS", "DATA")
PHASES = ("", "DESIGN", "BUILD", "TEST", "DOCS")


def change(operation: str, entity: str, payload: dict, entity_id: str = "") -> pb.ContextChange:
    return pb.ContextChange(operation=operation, entity_type=entity, entity_id=entity_id, payload=json.dumps(payload))


@pytest.fixture(scope="module")
async def story(gateway: Gateway) -> tuple[str, list[EventEnvelope]]:
    """A story of 29 events, most appended in batches (several events share one timestamp)."""
    stub = gateway.stub
    story_id = await new_story(stub)

    async def update(*changes: pb.ContextChange, role: str = "DEV") -> None:
        await stub.UpdateContext(pb.UpdateContextRequest(story_id=story_id, role=role, changes=changes))

    for i in range(4):
        await update(
            change("CREATE", "SUBTASK", {"title": f"Build part {i}"}, f"T{i}"),
            change("CREATE", "SUBTASK", {"title": f"Test part {i}", "role": "QA", "dependencies": [f"T{i}"]}, f"Q{i}"),
            change("CREATE", "DECISION", {"title": f"Approach {i}", "rationale": "simplest"}, f"D{i}"),
            change("UPDATE", "DECISION", {"subtask_id": f"T{i}"}, f"D{i}"),
        )
        await update(change("UPDATE", "SUBTASK", {"status": "IN_PROGRESS"}, f"T{i}"))
        await update(change("CREATE", "MILESTONE", {"kind": "PART", "description": f"part {i} started"}), role="QA")
    await stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=story_id, to_phase="BUILD"))
    await update(
        change("UPDATE", "DECISION", {"relation_type": "SUPERSEDES", "dst_id": "D0"}, "D3"),
        change("CREATE", "SUMMARY", {"summary": "Parts under way."}),
    )
    await stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=story_id, to_phase="TEST"))
    history = await gateway.client.history(story_id)
    assert len(history) == 29 and len({e.timestamp for e in history}) < 29
    return story_id, history


def expected(history: list[EventEnvelope], role: str, phase: str) -> pb.GetContextResponse:
    state = fold(StoryState(history[0].story_id), history)
    scope = ScopePolicy.load().scope(role, phase or state.phase)
    assembled = assemble_context(state, scope, tools=TOOLS_TEXT)
    return pb.GetContextResponse(
        context=assembled.context,
        token_count=assembled.token_count,
        scopes=assembled.scopes,
        version=str(assembled.version),
        blocks=pb.PromptBlocks(system=assembled.system, context=assembled.context, tools=TOOLS_TEXT),
    )


async def test_history_pages_through_the_whole_log(gateway: Gateway, story: tuple[str, list[EventEnvelope]]) -> None:
    story_id, history = story
    events, token, pages = [], "", 0
    while True:
        page = await gateway.stub.GetStoryHistory(
            pb.GetStoryHistoryRequest(story_id=story_id, limit=7, page_token=token)
        )
        events += page.events
        pages += 1
        assert page.story_version == 29
        token = page.next_page_token
        if not token:
            break
    assert pages == 5 and list(events) == [story_event(e) for e in history]
    assert {e.actor for e in events} == {"", "DEV", "QA"} and all(e.command_id for e in events)

    middle = await gateway.stub.GetStoryHistory(pb.GetStoryHistoryRequest(story_id=story_id, from_version=10, limit=3))
    assert [e.version for e in middle.events] == [10, 11, 12] and middle.next_page_token
    beyond = await gateway.stub.GetStoryHistory(pb.GetStoryHistoryRequest(story_id=story_id, from_version=30))
    assert (list(beyond.events), beyond.next_page_token, beyond.story_version) == ([], "", 29)
    default = await gateway.stub.GetStoryHistory(pb.GetStoryHistoryRequest(story_id=story_id))
    assert len(default.events) == 29 and not default.next_page_token


async def test_context_at_random_versions_matches_a_replay(
    gateway: Gateway, story: tuple[str, list[EventEnvelope]]
) -> None:
    story_id, history = story
    rng = random.Random(6)
    versions = [1, 29, 30, 1_000, *rng.sample(range(2, 29), 20)]
    for version in versions:
        role, phase = rng.choice(ROLES), rng.choice(PHASES)
        response = await gateway.stub.GetContextAtTime(
            pb.GetContextAtTimeRequest(story_id=story_id, role=role.lower(), phase=phase, version=version)
        )
        assert response == expected(history[:version], role, phase), (version, role, phase)


async def test_context_at_random_times_matches_a_replay(
    gateway: Gateway, story: tuple[str, list[EventEnvelope]]
) -> None:
    story_id, history = story
    rng = random.Random(7)
    micro = timedelta(microseconds=1)
    first, last = history[0].timestamp, history[-1].timestamp
    times = [first, last, last + timedelta(days=365), datetime(2999, 1, 1, tzinfo=UTC)]
    for event in rng.sample(history, 10):
        times += [event.timestamp - micro, event.timestamp, event.timestamp + micro]  # the boundaries
    times += [first + (last - first) * rng.random() for _ in range(10)]
    for at in times:
        role, phase = rng.choice(ROLES), rng.choice(PHASES)
        stamp = Timestamp()
        stamp.FromDatetime(at)
        request = pb.GetContextAtTimeRequest(story_id=story_id, role=role, phase=phase, at=stamp)
        seen = [e for e in history if e.timestamp <= at]
        if not seen:
            error = await rpc_error(gateway.stub.GetContextAtTime(request))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            continue
        response = await gateway.stub.GetContextAtTime(request)
        assert response == expected(seen, role, phase), (at, role, phase)
    # just before creation the story did not exist
    stamp = Timestamp()
    stamp.FromDatetime(first - micro)
    error = await rpc_error(
        gateway.stub.GetContextAtTime(pb.GetContextAtTimeRequest(story_id=story_id, role="QA", at=stamp))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_empty_phase_means_the_phase_at_that_point(
    gateway: Gateway, story: tuple[str, list[EventEnvelope]]
) -> None:
    story_id, _ = story
    policy = ScopePolicy.load()
    for version, phase in ((2, "DESIGN"), (26, "BUILD"), (29, "TEST")):
        response = await gateway.stub.GetContextAtTime(
            pb.GetContextAtTimeRequest(story_id=story_id, role="DEV", version=version)
        )
        assert list(response.scopes) == [s.value for s in policy.scope("DEV", phase).sections]
        assert f"Phase {phase}" in response.context and response.version == str(version)
