"""UpdateContext's change translation and the error -> status mapping (no servers)."""

from __future__ import annotations

import json

import grpc
import pytest
import ray.exceptions

from fleet_actors.domain.commands import (
    AddDecision,
    ChangeDecisionStatus,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordPlanVersion,
    RecordSummary,
    RelateDecisions,
    UpdateSubtask,
)
from fleet_actors.domain.events import ContextCreated, DecisionAdded, SubtaskCreated
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import (
    AppendOutcomeUnknown,
    ArchiveCorrupted,
    ArchiveUnavailable,
    BackendError,
    BackendUnavailable,
    ConcurrencyConflict,
    EventDecodeError,
    IncompatibleRelease,
    InvalidCommand,
    ProjectionTimeout,
    RuleViolation,
    StoryAlreadyExists,
    StoryError,
    StoryNotFound,
)
from fleet_actors.gateway.context_changes import TOOLS_TEXT, locate_change_error, plan_changes, settle
from fleet_actors.gateway.status_mapping import CODE_KEY, FIELD_KEY, rpc_failure
from fleet_actors.proto import context_service_pb2 as pb
from tests.domain.support import given


def change(
    operation: str, entity: str, payload: object = "", entity_id: str = "", reason: str = ""
) -> pb.ContextChange:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return pb.ContextChange(operation=operation, entity_type=entity, entity_id=entity_id, payload=text, reason=reason)


STORY_EVENTS = (
    ContextCreated("Checkout", "", "BUILD"),
    SubtaskCreated("T1", "Form", role="DEV"),
    DecisionAdded("D1", "ARCHITECTURE", "JWT", "stateless"),
)
STORY = given(*STORY_EVENTS)


def plan(*changes: pb.ContextChange, strict: bool = False, state=STORY):
    return settle(state, plan_changes(changes, state, role="DEV", task_id="T-current", strict=strict), strict=strict)


def commands(*changes: pb.ContextChange) -> list:
    return [c.command for c in plan(*changes).commands]


def test_the_supported_changes_become_their_commands() -> None:
    assert commands(change("create", "decision", {"title": "JWT2", "metadata": {"k": "v"}}, "D2", "stateless")) == [
        AddDecision("JWT2", "stateless", "ARCHITECTURE", "D2", (), "DEV", {"k": "v"})
    ]
    two = given(*STORY_EVENTS, DecisionAdded("D2", "ARCHITECTURE", "Paseto", "smaller"))
    assert [c.command for c in plan(change("UPDATE", "DECISION", {"supersedes": "D1"}, "D2"), state=two).commands] == [
        RelateDecisions("D2", "D1", "SUPERSEDES")
    ]
    assert commands(change("Update", "Decision", {"subtask_id": "T1"}, "D1")) == [RecordImpact("D1", "T1")]
    assert commands(change("CREATE", "SUBTASK", {"title": "API", "dependencies": ["T1"], "priority": 1}, "T2")) == [
        CreateSubtask("T2", "API", "DEV", "", ("T1",), 1, 0)
    ]
    assert commands(change("UPDATE", "SUBTASK", {"status": "IN_PROGRESS"}, "T1", "started")) == [
        UpdateSubtask("T1", "IN_PROGRESS", "started")
    ]
    assert commands(change("CREATE", "MILESTONE", {"kind": "DEMO"}, reason="shown")) == [
        RecordMilestone("DEMO", "shown")
    ]
    assert commands(change("UPDATE", "SUMMARY", {"summary": "s"})) == [RecordSummary("s")]


def test_the_callers_shapes_map_onto_our_events() -> None:
    data = json.dumps({"votes": {"a": 2}, "text": "x" * 10_000})
    decision = commands(change("CREATE", "DECISION", {"title": "Cache", "status": "PROPOSED", "data": data}, "D2"))
    assert isinstance(decision[0], AddDecision) and decision[0].properties == {"data": data}
    assert decision[1] == ChangeDecisionStatus("D2", "PROPOSED", "")
    assert commands(change("UPDATE", "DECISION", {"status": "RESOLVED"}, "D1", "agreed")) == [
        ChangeDecisionStatus("D1", "RESOLVED", "agreed")
    ]
    assert commands(change("CREATE", "MILESTONE", {"event": "story_created"})) == [RecordMilestone("STORY_CREATED", "")]
    assert commands(change("CREATE", "MILESTONE", {"type": "review", "title": "passed"})) == [
        RecordMilestone("REVIEW", "passed")
    ]
    created = commands(
        change("CREATE", "SUBTASK", {"sub_id": "T9", "type": "backend", "plan_id": "P1", "last_status": "PENDING"})
    )
    assert created == [CreateSubtask("T9", "T9", "DEV", properties={"type": "backend", "plan_id": "P1"})]
    done = plan(change("UPDATE", "SUBTASK", {"last_status": "COMPLETED"}, "T1"))
    assert [c.command for c in done.commands] == [
        UpdateSubtask("T1", "IN_PROGRESS", "implied by DONE"),
        UpdateSubtask("T1", "DONE", ""),
    ]
    assert "PENDING -> IN_PROGRESS -> DONE" in done.warnings[0] and done.warnings[0].startswith("changes[0]")
    assert commands(change("UPDATE", "PLAN", {"version": 3, "status": "approved", "owner": "po"}, "P1")) == [
        RecordPlanVersion("P1", 3, "APPROVED", "", {"owner": "po"})
    ]


def test_an_update_without_a_move_records_its_note_and_keys() -> None:
    assert commands(change("UPDATE", "SUBTASK", {"progress": 50}, "T1", "half way")) == [
        UpdateSubtask("T1", "PENDING", "half way", {"progress": "50"})
    ]
    nothing = plan(change("UPDATE", "SUBTASK", {"status": "PENDING"}, "T1"))
    assert not nothing.commands and "already PENDING" in nothing.warnings[0]


def test_an_unknown_subtask_is_created_then_updated_with_a_warning() -> None:
    result = plan(change("UPDATE", "SUBTASK", {"status": "IN_PROGRESS", "title": "Docs"}, "T7"))
    assert [c.command for c in result.commands] == [
        CreateSubtask("T7", "Docs", "DEV"),
        UpdateSubtask("T7", "IN_PROGRESS", ""),
    ]
    assert result.warnings == ("changes[0]: subtask 'T7' did not exist; created it, then updated it",)


def test_unapplicable_changes_are_skipped_with_a_warning_naming_them() -> None:
    result = plan(
        change("", ""),
        change("DELETE", "DECISION", {}, "D1"),
        change("CREATE", "EPIC", {}),
        change("CREATE", "SUBTASK", "{not json", "T5"),
        change("UPDATE", "SUBTASK", {"status": "REVIEWING"}, "T1"),
        change("UPDATE", "DECISION", {"subtask_id": "T404"}, "D1"),
        change("CREATE", "SUBTASK", {"title": "kept"}, "T6"),
    )
    assert [c.command for c in result.commands] == [CreateSubtask("T6", "kept", "DEV")]
    assert [w.split(" skipped")[0] for w in result.warnings] == [
        "changes[0]", "changes[1].operation", "changes[2].entity_type", "changes[3].payload",
        "changes[4].payload.status", "changes[5].payload.subtask_id",
    ]  # fmt: skip
    assert "append-only" in result.warnings[1] and "T404" in result.warnings[5]


@pytest.mark.parametrize(
    ("c", "field"),
    [
        (change("DELETE", "DECISION", {}, "D1"), "changes[0].operation"),
        (change("CREATE", "EPIC", {}), "changes[0].entity_type"),
        (change("CREATE", "SUBTASK", "[1, 2]"), "changes[0].payload"),
        (change("UPDATE", "DECISION", {"subtask_id": "T404"}, "D1"), "changes[0].payload.subtask_id"),
        (change("CREATE", "SUBTASK", {"title": "x" * 300}, "T5"), "changes[0].payload.title"),
    ],
)
def test_all_or_nothing_raises_naming_the_field(c: pb.ContextChange, field: str) -> None:
    with pytest.raises(StoryError) as caught:
        plan(c, strict=True)
    assert caught.value.field == field


def test_domain_rejections_point_back_at_the_request_field() -> None:
    planned = plan_changes(
        [change("CREATE", "SUBTASK", {"title": "x"}, "T1"), change("UPDATE", "DECISION", {"subtask_id": "T1"}, "D9")],
        StoryState("S"),
        role="DEV",
        task_id="",
        strict=True,
    ).commands
    title = InvalidCommand("change 0: title must not be empty", field="title")
    title.change_index = 0
    assert locate_change_error(title, planned).field == "changes[0].payload.title"
    missing = RuleViolation("change 1: decision 'D9' does not exist", field="decision_id")
    missing.change_index = 1
    located = locate_change_error(missing, planned)
    assert located.field == "changes[1].entity_id" and located.message.startswith("changes[1]: ")
    assert locate_change_error(StoryNotFound("S1"), planned).field == "story_id"


def test_the_tools_block_names_every_entity_type() -> None:
    for entity in ("DECISION", "SUBTASK", "MILESTONE", "PLAN", "SUMMARY"):
        assert f"- {entity} " in TOOLS_TEXT


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidCommand("title must not be empty", field="title"), grpc.StatusCode.INVALID_ARGUMENT),
        (StoryNotFound("S1"), grpc.StatusCode.NOT_FOUND),
        (StoryAlreadyExists("S1"), grpc.StatusCode.ALREADY_EXISTS),
        (RuleViolation("phases advance one at a time", field="to_phase"), grpc.StatusCode.FAILED_PRECONDITION),
        (ConcurrencyConflict("another writer", expected=1, actual=2), grpc.StatusCode.ABORTED),
        (BackendUnavailable("NATS is down"), grpc.StatusCode.UNAVAILABLE),
        (AppendOutcomeUnknown("timed out"), grpc.StatusCode.UNAVAILABLE),
        (ProjectionTimeout("not projected"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (EventDecodeError("corrupt"), grpc.StatusCode.DATA_LOSS),
        (IncompatibleRelease("another release"), grpc.StatusCode.FAILED_PRECONDITION),
        (BackendError("the graph database failed"), grpc.StatusCode.INTERNAL),
        (ArchiveCorrupted("segment 3 does not match the manifest"), grpc.StatusCode.DATA_LOSS),
        (ArchiveUnavailable("the bucket cannot be reached"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_story_errors_map_to_precise_statuses(error: StoryError, code: grpc.StatusCode) -> None:
    failure = rpc_failure(error)
    assert failure.code == code
    assert error.message in failure.details
    assert (CODE_KEY, failure.reason) in failure.trailing_metadata


def test_invalid_argument_names_the_field_in_details_and_metadata() -> None:
    failure = rpc_failure(InvalidCommand("must be an integer", field="changes[2].payload.priority"))
    assert failure.details == "changes[2].payload.priority: must be an integer"
    assert (FIELD_KEY, "changes[2].payload.priority") in failure.trailing_metadata
    # a message that already names its field is not prefixed twice
    assert rpc_failure(InvalidCommand("title must not be empty", field="title")).details == "title must not be empty"


def test_unexpected_errors_are_internal_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("secret internals")
    except KeyError as error:
        failure = rpc_failure(error)
    assert failure.code == grpc.StatusCode.INTERNAL
    assert "secret" not in failure.details and "Traceback" not in failure.details
    reference = failure.details.split("reference ")[1].split(";")[0]
    assert reference in caplog.text and "KeyError" in caplog.text  # the log has it all, under the reference
    assert rpc_failure(TimeoutError()).code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert rpc_failure(ray.exceptions.RaySystemError("raylet gone")).code == grpc.StatusCode.UNAVAILABLE
