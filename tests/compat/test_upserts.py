"""Item 3: the upserts the fleet's callers rely on, and where we stay strict."""

from __future__ import annotations

import json

import grpc

from tests.compat.conftest import Compat
from tests.conftest import unique_id
from tests.gateway.conftest import error_field, rpc_error


async def test_create_story_again_with_the_same_content_is_ok_and_appends_nothing(compat: Compat) -> None:
    pb = compat.pb
    sid = unique_id("compat-demo")
    request = pb.CreateStoryRequest(story_id=sid, title="Redis caching", description="faster reads")
    first = await compat.stub.CreateStory(request)
    again = await compat.stub.CreateStory(request)
    assert (first.version, again.version) == (1, 1)
    assert (again.story_id, again.context_id, again.current_phase) == (sid, sid, "DESIGN")
    await compat.stub.TransitionPhase(pb.TransitionPhaseRequest(story_id=sid, to_phase="BUILD"))
    rerun = await compat.stub.CreateStory(request)  # a demo re-run after the story moved on
    assert (rerun.version, rerun.current_phase) == (2, "BUILD")
    different = await rpc_error(
        compat.stub.CreateStory(pb.CreateStoryRequest(story_id=sid, title="Another story", description="faster reads"))
    )
    assert (different.code(), error_field(different)) == (grpc.StatusCode.ALREADY_EXISTS, "story_id")
    assert len(await compat.client.history(sid)) == 2


async def test_initialize_project_context_is_create_story(compat: Compat) -> None:
    pb = compat.pb
    sid = unique_id("compat-init")
    request = pb.InitializeProjectContextRequest(
        story_id=sid, title="Implement Redis caching", description="Neo4j reads are slow", initial_phase="DESIGN"
    )
    created = await compat.stub.InitializeProjectContext(request)
    assert (created.context_id, created.story_id, created.current_phase, created.version) == (sid, sid, "DESIGN", 1)
    assert (await compat.stub.InitializeProjectContext(request)).version == 1
    same = pb.CreateStoryRequest(story_id=sid, title=request.title, description=request.description)
    assert (await compat.stub.CreateStory(same)).version == 1
    state = await compat.client.get_story(sid)
    assert (state.title, state.phase, state.version) == ("Implement Redis caching", "DESIGN", 1)


async def test_an_update_of_an_unknown_subtask_creates_it_in_the_same_batch(compat: Compat) -> None:
    sid = await compat.new_story()
    before = await compat.version(sid)
    response = await compat.update(
        sid, compat.change("UPDATE", "SUBTASK", {"status": "IN_PROGRESS", "title": "Card form"}, "T7")
    )
    assert response.version == before + 2
    assert list(response.warnings) == ["changes[0]: subtask 'T7' did not exist; created it, then updated it"]
    appended = await compat.client.history(sid, before + 1)
    assert [e.event_type for e in appended] == ["subtask_created", "subtask_updated"]
    assert len({e.command_id for e in appended}) == 1
    subtask = (await compat.client.get_story(sid)).subtasks["T7"]
    assert (subtask.title, subtask.role, subtask.status) == ("Card form", "DEVELOPER", "IN_PROGRESS")


async def test_a_task_may_name_a_dependency_not_created_yet(compat: Compat) -> None:
    sid = await compat.new_story()
    response = await compat.update(
        sid,
        compat.change("CREATE", "SUBTASK", {"title": "API", "dependencies": ["T1", "T-later"]}, "T2"),
        compat.change("CREATE", "SUBTASK", {"title": "Schema"}, "T1"),
    )
    assert any("T1, T-later" in w and "pending_dependencies" in w for w in response.warnings)
    (created, _) = await compat.client.history(sid, 2)
    assert created.payload.dependencies == ()
    assert json.loads(created.payload.properties["pending_dependencies"]) == ["T1", "T-later"]


async def test_a_focus_on_an_unknown_subtask_answers_ok_with_a_warning(compat: Compat) -> None:
    sid = await compat.new_story()
    response = await compat.stub.GetContext(
        compat.pb.GetContextRequest(story_id=sid, role="developer", phase="DESIGN", subtask_id="T404", min_version=1)
    )
    assert response.version == "1" and "Checkout flow" in response.context
    assert list(response.warnings) == [f"subtask_id 'T404' not found in story {sid!r}; answered without a focus"]


async def test_create_task_stays_strict_about_dependencies(compat: Compat) -> None:
    sid = await compat.new_story()
    error = await rpc_error(
        compat.stub.CreateTask(
            compat.pb.CreateTaskRequest(
                story_id=sid, task_id="T2", title="API", role="developer", dependencies=["T404"]
            )
        )
    )
    assert (error.code(), error_field(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "dependencies")
    assert await compat.version(sid) == 1
