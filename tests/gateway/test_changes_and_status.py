"""UpdateContext's change translation and the error -> status mapping (no servers)."""

from __future__ import annotations

import json

import grpc
import pytest
import ray.exceptions

from fleet_actors.domain.commands import (
    AddDecision,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordSummary,
    RelateDecisions,
    UpdateSubtask,
)
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
from fleet_actors.gateway.context_changes import CHANGE_KINDS, TOOLS_TEXT, change_to_command, locate_change_error
from fleet_actors.gateway.status_mapping import CODE_KEY, FIELD_KEY, rpc_failure
from fleet_actors.proto import context_service_pb2 as pb


def change(
    operation: str, entity: str, payload: object = "", entity_id: str = "", reason: str = ""
) -> pb.ContextChange:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return pb.ContextChange(operation=operation, entity_type=entity, entity_id=entity_id, payload=text, reason=reason)


def convert(c: pb.ContextChange, index: int = 0):
    return change_to_command(index, c, "DEV", "T-current").command


def test_each_supported_change_becomes_its_command() -> None:
    assert convert(change("create", "decision", {"title": "JWT", "metadata": {"k": "v"}}, "D1", "stateless")) == (
        AddDecision("JWT", "stateless", "ARCHITECTURE", "D1", (), "DEV", {"k": "v"})
    )
    assert convert(change("CREATE", "DECISION", {"title": "JWT", "rationale": "r"})).decision_id is None
    assert convert(change("UPDATE", "DECISION", {"relation_type": "SUPERSEDES", "dst_id": "D1"}, "D2")) == (
        RelateDecisions("D2", "D1", "SUPERSEDES")
    )
    assert convert(change("Update", "Decision", {"subtask_id": "T1"}, "D2")) == RecordImpact("D2", "T1")
    assert convert(change("CREATE", "SUBTASK", {"title": "Form", "dependencies": ["T0"], "priority": 1}, "T1")) == (
        CreateSubtask("T1", "Form", "DEV", "", ("T0",), 1, 0)
    )
    assert convert(change("UPDATE", "SUBTASK", {"status": "DONE"}, reason="merged")) == (
        UpdateSubtask("T-current", "DONE", "merged")
    )
    assert convert(change("CREATE", "MILESTONE", {"kind": "DEMO"}, reason="shown")) == RecordMilestone("DEMO", "shown")
    assert convert(change("CREATE", "SUMMARY", {"summary": "s"})) == RecordSummary("s")
    assert convert(change("UPDATE", "SUMMARY", {"summary": "s"})) == RecordSummary("s")


@pytest.mark.parametrize(
    ("c", "field"),
    [
        (change("DELETE", "DECISION", {}, "D1"), "changes[3].operation"),
        (change("UPDATE", "MILESTONE", {"kind": "X"}, "M1"), "changes[3].operation"),
        (change("CREATE", "EPIC", {}), "changes[3].entity_type"),
        (change("CREATE", "", {}), "changes[3].entity_type"),
        (change("CREATE", "SUBTASK", "{not json"), "changes[3].payload"),
        (change("CREATE", "SUBTASK", "[1, 2]"), "changes[3].payload"),
        (change("CREATE", "SUBTASK", {"title": "x", "colour": "red"}), "changes[3].payload.colour"),
        (change("CREATE", "SUBTASK", {"title": 5}), "changes[3].payload.title"),
        (change("CREATE", "SUBTASK", {"priority": True}), "changes[3].payload.priority"),
        (change("CREATE", "SUBTASK", {"dependencies": "T1"}), "changes[3].payload.dependencies"),
        (change("CREATE", "DECISION", {"metadata": {"k": 1}}), "changes[3].payload.metadata"),
        (change("UPDATE", "DECISION", {"relation_type": "DEPENDS_ON"}, "D1"), "changes[3].payload"),
        (change("UPDATE", "DECISION", {"dst_id": "D2", "subtask_id": "T1"}, "D1"), "changes[3].payload"),
    ],
)
def test_unsupported_or_malformed_changes_name_the_field(c: pb.ContextChange, field: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        change_to_command(3, c, "DEV", "")
    assert caught.value.field == field


def test_domain_rejections_point_back_at_the_request_field() -> None:
    changes = [
        change_to_command(0, change("CREATE", "SUBTASK", {"title": "x"}, "T1"), "DEV", ""),
        change_to_command(1, change("UPDATE", "DECISION", {"subtask_id": "T1"}, "D9"), "DEV", ""),
    ]
    title = InvalidCommand("change 0: title must not be empty", field="title")
    title.change_index = 0
    assert locate_change_error(title, changes).field == "changes[0].payload.title"
    missing = RuleViolation("change 1: decision 'D9' does not exist", field="decision_id")
    missing.change_index = 1
    assert locate_change_error(missing, changes).field == "changes[1].entity_id"
    story = locate_change_error(StoryNotFound("S1"), changes)
    assert story.field == "story_id"
    unprefixed = locate_change_error(InvalidCommand("batch too big", field="changes"), changes)
    assert unprefixed.field == "changes"


def test_the_tools_block_lists_exactly_the_supported_changes() -> None:
    listed = {tuple(line[2:].split(":")[0].split()) for line in TOOLS_TEXT.splitlines() if line.startswith("- ")}
    assert listed == set(CHANGE_KINDS)


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
