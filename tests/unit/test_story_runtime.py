"""The command loop (load -> decide -> append -> evolve) against the honest in-memory store."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from fleet_actors.adapters.memory.event_store import InMemoryEventStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordSummary,
    UpdateSubtask,
)
from fleet_actors.errors import (
    AppendOutcomeUnknown,
    ConcurrencyConflict,
    InvalidCommand,
    RuleViolation,
    StoryNotFound,
)

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def runtime(store, story_id="S1"):
    counter = itertools.count()
    return StoryRuntime(story_id, store, clock=lambda: NOW, new_id=lambda: f"id{next(counter)}")


def request(command, command_id, story_id="S1", expected_version=None):
    return CommandRequest(story_id, command, command_id, "tester", expected_version)


@pytest.fixture
def store():
    return InMemoryEventStore()


async def test_versions_are_gap_free_and_events_stamped(store):
    story = runtime(store)
    r1 = await story.execute(request(CreateStory("Login"), "c1"))
    r2 = await story.execute(request(CreateSubtask("T1", "Form", "DEV"), "c2"))
    assert (r1.version, r2.version) == (1, 2)
    events = await story.history()
    assert [(e.version, e.command_id, e.actor, e.timestamp) for e in events] == [
        (1, "c1", "tester", NOW),
        (2, "c2", "tester", NOW),
    ]


async def test_resent_command_id_returns_first_result_and_appends_nothing(store):
    story = runtime(store)
    await story.execute(request(CreateStory("Login"), "c1"))
    first = await story.execute(request(AddDecision("JWT", "stateless"), "c2"))
    again = await story.execute(request(AddDecision("JWT", "stateless"), "c2"))
    assert again.duplicate and (again.version, again.event_ids, again.decision_id) == (
        first.version,
        first.event_ids,
        first.decision_id,
    )
    assert len(await store.read_all("S1")) == 2


async def test_command_ids_survive_reactivation(store):
    await runtime(store).execute(request(CreateStory("Login"), "c1"))
    fresh = runtime(store)  # a new actor after passivation
    assert (await fresh.execute(request(CreateStory("Login"), "c1"))).duplicate


async def test_rejection_appends_nothing(store):
    story = runtime(store)
    await story.execute(request(CreateStory("Login"), "c1"))
    with pytest.raises(RuleViolation):
        await story.execute(request(UpdateSubtask("T9", "DONE"), "c2"))
    with pytest.raises(StoryNotFound):
        await runtime(store, "S2").execute(request(RecordSummary("x"), "c3", "S2"))
    assert len(await store.read_all("S1")) == 1 and await store.read_all("S2") == []


async def test_batch_is_one_atomic_append(store):
    story = runtime(store)
    await story.execute(request(CreateStory("Login"), "c1"))
    result = await story.execute(
        request(
            ApplyChanges(
                (
                    CreateSubtask("T1", "Form", "DEV"),
                    AddDecision("JWT", "r", decision_id="D1"),
                    RecordImpact("D1", "T1"),
                )
            ),
            "c2",
        )
    )
    assert result.version == 4 and len(result.event_ids) == 3 and result.decision_id == "D1"
    assert [e.event_type for e in await story.history(2)] == ["subtask_created", "decision_added", "decision_impacted"]


async def test_another_writer_is_caught_up_and_the_command_decided_again(store):
    ours, theirs = runtime(store), runtime(store)
    await ours.execute(request(CreateStory("Login"), "c1"))
    await theirs.execute(request(CreateSubtask("T1", "Form", "DEV"), "c2"))
    # `ours` is stale; its append conflicts, it catches up, sees T1 and decides again.
    result = await ours.execute(request(UpdateSubtask("T1", "IN_PROGRESS"), "c3"))
    assert result.version == 3 and ours.state.subtasks["T1"].status == "IN_PROGRESS"


async def test_expected_version_mismatch_is_a_conflict(store):
    story = runtime(store)
    await story.execute(request(CreateStory("Login"), "c1"))
    with pytest.raises(ConcurrencyConflict) as caught:
        await story.execute(request(RecordSummary("x"), "c2", expected_version=0))
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    assert (await story.execute(request(RecordSummary("x"), "c3", expected_version=1))).version == 2


async def test_persistent_conflict_is_reported(store):
    class AlwaysConflicting(InMemoryEventStore):
        async def append(self, story_id, expected_sequence, events):
            raise ConcurrencyConflict("someone else", expected=expected_sequence, actual=expected_sequence + 1)

    with pytest.raises(ConcurrencyConflict):
        await runtime(AlwaysConflicting()).execute(request(CreateStory("Login"), "c1"))


async def test_unknown_append_outcome_drops_state_and_reloads(store):
    class LandsButTimesOut(InMemoryEventStore):
        fail_next = False

        async def append(self, story_id, expected_sequence, events):
            result = await super().append(story_id, expected_sequence, events)
            if self.fail_next:
                self.fail_next = False
                raise AppendOutcomeUnknown("timed out")
            return result

    flaky = LandsButTimesOut()
    story = runtime(flaky)
    await story.execute(request(CreateStory("Login"), "c1"))
    flaky.fail_next = True
    with pytest.raises(AppendOutcomeUnknown):
        await story.execute(request(RecordSummary("x"), "c2"))
    retried = await story.execute(request(RecordSummary("x"), "c2"))  # the client's retry
    assert retried.duplicate and retried.version == 2
    assert len(await flaky.read_all("S1")) == 2


async def test_bad_command_id_and_wrong_story_rejected(store):
    story = runtime(store)
    with pytest.raises(InvalidCommand):
        await story.execute(request(CreateStory("Login"), "bad id"))
    with pytest.raises(InvalidCommand):
        await story.execute(request(CreateStory("Login"), "c1", story_id="S2"))


async def test_state_at_version_and_time_boundaries(store):
    from datetime import timedelta

    clock = iter(NOW + timedelta(seconds=s) for s in range(10, 100, 10))
    counter = itertools.count()
    story = StoryRuntime("S1", store, clock=lambda: next(clock), new_id=lambda: f"id{next(counter)}")
    await story.execute(request(CreateStory("Login"), "c1"))  # at +10 s
    await story.execute(request(CreateSubtask("T1", "Form", "DEV"), "c2"))  # at +20 s
    await story.execute(request(UpdateSubtask("T1", "IN_PROGRESS"), "c3"))  # at +30 s
    assert (await story.state_at(version=2)).subtasks["T1"].status == "PENDING"
    assert (await story.state_at(at=NOW + timedelta(seconds=30))).subtasks["T1"].status == "IN_PROGRESS"
    assert (await story.state_at(at=NOW + timedelta(seconds=29))).version == 2
    assert (await story.state_at(at=NOW + timedelta(days=365))).version == 3
    with pytest.raises(StoryNotFound):
        await story.state_at(at=NOW + timedelta(seconds=9))
    for bad in ({}, {"version": 0}, {"at": datetime(2026, 1, 1)}, {"version": 1, "at": NOW}):
        with pytest.raises(InvalidCommand):
            await story.state_at(**bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expected_version", -1),
        ("expected_version", float("nan")),
        ("expected_version", 1.5),
        ("expected_version", "3"),
        ("actor", "x" * 2_000_000),
        ("actor", "x" * 65),
        ("actor", "agent\x00"),
    ],
)
async def test_a_malformed_request_is_invalid_naming_the_field_and_appends_nothing(store, field, value):
    story = runtime(store)
    await story.execute(request(CreateStory("Login"), "c1"))
    fields = {"expected_version": None, "actor": "tester", field: value}
    with pytest.raises(InvalidCommand) as error:
        await story.execute(CommandRequest("S1", RecordSummary("x"), "c2", fields["actor"], fields["expected_version"]))
    assert error.value.field == field
    assert len(await store.read_all("S1")) == 1


async def test_text_that_is_not_unicode_is_invalid_not_an_encoding_crash(store):
    story = runtime(store)
    await story.execute(request(CreateStory("Login"), "c1"))
    with pytest.raises(InvalidCommand) as error:
        await story.execute(request(CreateSubtask("T1", "bad \ud800", "DEV"), "c2"))
    assert error.value.field == "title"
    assert len(await store.read_all("S1")) == 1
