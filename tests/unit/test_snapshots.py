"""Snapshots: cadence, activation from a snapshot equals full replay, corrupt snapshots fall back."""

from __future__ import annotations

import contextlib
import copy
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_actors.adapters.memory.event_store import InMemoryEventStore
from fleet_actors.adapters.memory.snapshot_store import InMemorySnapshotStore
from fleet_actors.application import story_runtime
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.codec.state import SnapshotEncoder, decode_snapshot, encode_state
from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordSummary,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.results import CommandResult
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import StateBuilder, evolve, fold
from fleet_actors.errors import BackendUnavailable, StoryError

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def make_runtime(store, snapshots, every=5, story_id="S1"):
    ticks = itertools.count()
    ids = itertools.count()
    return StoryRuntime(
        story_id,
        store,
        clock=lambda: T0 + timedelta(seconds=next(ticks)),
        new_id=lambda: f"id{next(ids)}",
        snapshots=snapshots,
        snapshot_every=every,
    )


async def run_all(runtime, commands):
    for number, command in enumerate(commands):
        # Random sequences contain rejected commands; they must leave no trace.
        with contextlib.suppress(StoryError):
            await runtime.execute(CommandRequest("S1", command, f"cmd{number}"))


ids = st.sampled_from(["A", "B", "C", "D"])
commands = st.lists(
    st.one_of(
        st.builds(CreateSubtask, ids, st.just("t"), st.just("DEV"), dependencies=st.lists(ids, max_size=2).map(tuple)),
        st.builds(UpdateSubtask, ids, st.sampled_from(["IN_PROGRESS", "DONE", "BLOCKED", "PENDING", "CANCELLED"])),
        st.builds(AddDecision, st.just("d"), st.just("r"), decision_id=ids),
        st.builds(RelateDecisions, ids, ids, st.sampled_from(["DEPENDS_ON", "SUPERSEDES"])),
        st.builds(RecordImpact, ids, ids),
        st.builds(TransitionPhase, st.sampled_from(["DESIGN", "BUILD", "TEST", "DOCS"]), st.sampled_from(["", "why"])),
        st.builds(RecordMilestone, st.sampled_from(["STARTED", "REVIEWED"])),
        st.builds(RecordSummary, st.text(min_size=1, max_size=20)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=commands, every=st.integers(min_value=1, max_value=7))
async def test_activation_from_snapshot_equals_full_replay(commands, every):
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every)
    await run_all(writer, [CreateStory("Story"), *commands])
    from_snapshot = make_runtime(store, snapshots, every)
    await from_snapshot.load()
    full = make_runtime(store, None)
    await full.load()
    assert from_snapshot.state == full.state == writer.state
    assert from_snapshot.last_sequence == full.last_sequence
    assert from_snapshot.replayed_on_load < every or writer.state.version < every


async def test_snapshot_cadence_and_replay_length():
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=10)
    await run_all(writer, [CreateStory("Story")] + [RecordSummary(f"s{i}") for i in range(24)])
    assert [r.version for r in await snapshots.refs("S1")] == [10, 20]
    reader = make_runtime(store, snapshots, every=10)
    await reader.load()
    assert reader.state.version == 25 and reader.replayed_on_load == 5


async def test_retried_command_is_recognised_after_activation_from_snapshot():
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=2)
    await run_all(writer, [CreateStory("Story"), RecordSummary("a"), RecordSummary("b")])
    reader = make_runtime(store, snapshots, every=2)
    again = await reader.execute(CommandRequest("S1", RecordSummary("a"), "cmd1"))
    assert again.duplicate and again.version == 2


async def test_the_whole_idempotency_window_survives_reactivation_from_a_snapshot():
    # The fault campaign's case: 1,150 command ids; snapshots carried the last 1,000 results only, so
    # after a crash the story re-activated from its snapshot applied c5 a second time.
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=100)
    await writer.execute(CommandRequest("S1", CreateStory("Story"), "create"))
    for i in range(1150):
        await writer.execute(CommandRequest("S1", RecordSummary(f"s{i}"), f"c{i}"))
    assert (await writer.execute(CommandRequest("S1", RecordSummary("s5"), "c5"))).duplicate
    crashed = make_runtime(store, snapshots, every=100)  # a new actor: after SIGKILL, or passivated
    for i in (5, 0, 149, 150, 1149):
        again = await crashed.execute(CommandRequest("S1", RecordSummary(f"s{i}"), f"c{i}"))
        assert again.duplicate and again.version == i + 2
    assert len(await store.read_all("S1")) == 1151


class CountingStore(InMemoryEventStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read(self, story_id, after_sequence=0):
        async for stored in super().read(story_id, after_sequence):
            self.reads += 1
            yield stored


@pytest.mark.parametrize("total", [8, 25, 61, 140])
async def test_the_idempotency_window_is_the_same_after_every_reactivation(monkeypatch, total):
    # A small window: 20 command ids, 4 carried in a snapshot. Commands of one and of two events,
    # another story's events in between, and an actor that is re-activated every few commands.
    monkeypatch.setattr(story_runtime, "COMMAND_ID_WINDOW", 20)
    monkeypatch.setattr(story_runtime, "SNAPSHOT_COMMANDS", 4)
    store, snapshots = CountingStore(), InMemorySnapshotStore()
    other = make_runtime(store, None, story_id="S2")
    await other.execute(CommandRequest("S2", CreateStory("Other"), "o-create"))
    runtime = make_runtime(store, snapshots, every=3)
    await runtime.execute(CommandRequest("S1", CreateStory("Story"), "create"))
    versions = {}
    for i in range(total):
        if i % 7 == 6:
            runtime = make_runtime(store, snapshots, every=3)
        command = ApplyChanges((RecordSummary("a"), RecordSummary("b"))) if i % 3 == 0 else RecordSummary("c")
        versions[f"c{i}"] = (await runtime.execute(CommandRequest("S1", command, f"c{i}"))).version
        await other.execute(CommandRequest("S2", RecordSummary("x"), f"o{i}"))
    appended = len(await store.read_all("S1"))
    store.reads = 0
    fresh = make_runtime(store, snapshots, every=3)
    await fresh.load()
    newest = list(versions)[-1]  # a retry of a recent command id: among those the snapshot carries
    assert (await fresh.execute(CommandRequest("S1", RecordSummary("c"), newest))).duplicate
    assert store.reads <= 3  # only the events after the snapshot: no read-back for reads or recent retries
    store.reads = 0
    remembered = list(versions)[-20:]
    for command_id in remembered:
        again = await fresh.execute(CommandRequest("S1", RecordSummary("c"), command_id))
        assert again.duplicate and again.version == versions[command_id]
    # one read-back, of the window's events (at most two per command), not of the whole story
    assert store.reads <= 2 * 20 + 3
    assert len(await store.read_all("S1")) == appended
    if total > 20:  # the window is 20 ids: the one before them is new again
        assert not (await fresh.execute(CommandRequest("S1", RecordSummary("c"), f"c{total - 21}"))).duplicate


async def test_corrupt_snapshot_falls_back_to_an_older_one_then_to_replay():
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=5)
    await run_all(writer, [CreateStory("Story")] + [RecordSummary(f"s{i}") for i in range(11)])
    refs = await snapshots.refs("S1")
    snapshots.blobs[refs[-1].position] = b"\x00\xffnot a snapshot"
    reader = make_runtime(store, snapshots, every=5)
    await reader.load()
    assert reader.state == writer.state and reader.replayed_on_load == 7  # from the v5 snapshot
    for ref in refs:
        snapshots.blobs[ref.position] = b"\x08\x63"  # a schema version from the future
    reader = make_runtime(store, snapshots, every=5)
    await reader.load()
    assert reader.state == writer.state and reader.replayed_on_load == 12


async def test_temporal_query_uses_the_nearest_earlier_snapshot():
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=4)
    await run_all(writer, [CreateStory("Story")] + [RecordSummary(f"s{i}") for i in range(10)])
    full = make_runtime(store, None)
    for version in range(1, 12):
        assert await writer.state_at(version=version) == await full.state_at(version=version)
    for second in range(0, 12):
        at = T0 + timedelta(seconds=second)
        assert await writer.state_at(at=at) == await full.state_at(at=at)


async def test_rebuild_state_replays_everything_and_snapshots():
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=100)
    await run_all(writer, [CreateStory("Story"), RecordSummary("a")])
    state = await writer.rebuild_state()
    assert state.version == 2 and writer.replayed_on_load == 2
    assert [r.version for r in await snapshots.refs("S1")] == [2]


@pytest.mark.parametrize("every", [1, 3])
async def test_snapshot_failure_never_fails_a_command(every):
    class Broken(InMemorySnapshotStore):
        async def save(self, snapshot):
            raise BackendUnavailable("snapshot stream unavailable")

    runtime = make_runtime(InMemoryEventStore(), Broken(), every)
    await run_all(runtime, [CreateStory("Story"), RecordSummary("a"), RecordSummary("b")])
    assert runtime.state.version == 3


async def test_history_pages_start_at_the_nearest_snapshot():
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=5)
    await run_all(writer, [CreateStory("Story")] + [RecordSummary(f"s{i}") for i in range(20)])
    page = await writer.history(12, limit=3)
    assert [e.version for e in page] == [12, 13, 14]
    assert [e.version for e in await writer.history(19)] == [19, 20, 21]
    assert [e.version for e in await make_runtime(store, None).history(1, limit=2)] == [1, 2]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=commands, split=st.integers(min_value=0, max_value=45))
async def test_fold_equals_evolving_event_by_event_and_leaves_its_input_alone(commands, split):
    store = InMemoryEventStore()
    await run_all(make_runtime(store, None), [CreateStory("Story"), *commands])
    events = [stored.envelope for stored in await store.read_all("S1")]
    stepwise, as_produced = [StoryState("S1")], [StoryState("S1")]
    for envelope in events:
        stepwise.append(evolve(stepwise[-1], envelope))
        as_produced.append(copy.deepcopy(stepwise[-1]))
    assert stepwise == as_produced  # no state was changed by the events evolved from it
    middle = fold(StoryState("S1"), events[:split])
    before = copy.deepcopy(middle)
    assert fold(middle, events[split:]) == stepwise[-1]
    assert middle == before == stepwise[min(split, len(events))]  # the fold built on it changed nothing
    # A builder that hands out states along the way and goes on (the projector, a story's catch-up)
    builder, handed_out = StateBuilder(StoryState("S1")), []
    for envelope in events:
        builder.add(envelope)
        if envelope.version % 3 == split % 3:
            handed_out.append((builder.state(), copy.deepcopy(builder.state())))
    assert builder.state() == stepwise[-1]
    assert all(state == copied == stepwise[state.version] for state, copied in handed_out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=commands, other=commands)
async def test_incremental_snapshot_encoding_equals_encoding_the_whole_state(commands, other):
    # The encoder reuses the records of values a story's previous snapshot held: each snapshot along
    # the way, two stories interleaved (one encoder per snapshot store), must decode as a fresh encoding.
    histories = []
    for story_id, sequence in (("S1", commands), ("S2", other)):
        store = InMemoryEventStore()
        runtime = make_runtime(store, None, story_id=story_id)
        for number, command in enumerate([CreateStory("Story"), *sequence]):
            with contextlib.suppress(StoryError):
                await runtime.execute(CommandRequest(story_id, command, f"cmd{number}"))
        histories.append([stored.envelope for stored in await store.read_all(story_id)])
    encoder = SnapshotEncoder(stories=1)  # room for one: the other story's records are dropped, not mixed in
    states = {"S1": StoryState("S1"), "S2": StoryState("S2")}
    results: tuple[CommandResult, ...] = ()
    for envelope in itertools.chain.from_iterable(itertools.zip_longest(*histories)):
        if envelope is None:
            continue
        state = states[envelope.story_id] = evolve(states[envelope.story_id], envelope)
        result = CommandResult(state.story_id, state.version, (envelope.event_id,), f"c{state.version}")
        results = (*results[-3:], result)
        assert decode_snapshot(encoder.encode(state, state.version, results, 2)) == decode_snapshot(
            encode_state(state, state.version, results, 2)
        )


async def test_a_story_with_many_values_is_snapshotted_less_often(monkeypatch):
    monkeypatch.setattr(story_runtime, "SNAPSHOT_VALUES_PER_EVENT", 2)
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    writer = make_runtime(store, snapshots, every=5)
    await run_all(writer, [CreateStory("Story")] + [CreateSubtask(f"T{i}", "t", "DEV") for i in range(29)])
    # 5 events apart while the state holds under 10 values (version - 1 subtasks), then values / 2 apart:
    # at v18, 17 // 2 = 8 events after v10; the next is due 14 events after v18 (v32, not reached)
    versions = [r.version for r in await snapshots.refs("S1")]
    assert versions == [5, 10, 18]
    reader = make_runtime(store, snapshots, every=5)
    await reader.load()
    assert reader.state == writer.state and reader.replayed_on_load == 12


@pytest.mark.parametrize("events", [0, 1, 400])
def test_a_snapshot_decodes_to_the_state_and_commands_it_was_taken_of(events):
    # Generated builders read every field of every value type: nested alternatives, metadata and
    # property maps, dependencies, timestamps (absent ones stay None), the carried command results.
    from fleet_actors.loadgen.histories import story_history

    history = story_history("S1", events, start=T0) if events else []
    state = fold(StoryState("S1"), history)
    assert events < 400 or (any(d.alternatives for d in state.decisions.values()) and state.milestones)
    results = [CommandResult("S1", n, (f"e{n}", f"f{n}"), f"c{n}", f"D{n}" if n % 2 else None) for n in range(5)]
    decoded, last_sequence, commands, window_start = decode_snapshot(encode_state(state, 900, results, 3))
    assert (decoded, last_sequence, commands, window_start) == (state, 900, results, 3)
    assert decoded.created_at == state.created_at and (events or decoded.updated_at is None)
