"""Reads in the caller's process (DirectReads) against a real nats-server: the same answers as the
story's runtime (what the actor path serves), past states from snapshots, unknown stories typed."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from fleet_actors import direct_reads
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.direct_reads import DirectReads
from fleet_actors.domain.commands import CreateStory, RecordSummary
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import InvalidCommand, StoryNotFound
from fleet_actors.settings import Settings
from tests.integration.conftest import write_story

Stores = tuple[JetStreamEventStore, JetStreamSnapshotStore]


@pytest.fixture
async def reads(stream_settings: Settings):
    direct = DirectReads(stream_settings)
    yield direct
    await direct.close()


@pytest.fixture
async def stores(stream_settings: Settings):
    store = await JetStreamEventStore.connect(stream_settings)
    snapshots = JetStreamSnapshotStore(store.connection, stream_settings)
    await snapshots.ensure_stream()
    yield store, snapshots
    await store.close()


class Writer:
    """A story's runtime with snapshots every 7 events, as a story actor runs it."""

    def __init__(self, stores: Stores, story_id: str, name: str = "w") -> None:
        self.story_id, self.store, self.name = story_id, stores[0], name
        self.runtime = StoryRuntime(story_id, stores[0], snapshots=stores[1], snapshot_every=7)
        self._ids = itertools.count()

    async def execute(self, story_id: str, command) -> object:
        return await self.runtime.execute(CommandRequest(story_id, command, f"{self.name}{next(self._ids)}", "tester"))

    async def summaries(self, count: int, text: str = "s") -> None:
        for i in range(count):
            await self.execute(self.story_id, RecordSummary(f"{text} {i}"))

    async def log(self) -> list[EventEnvelope]:
        return [stored.envelope for stored in await self.store.read_all(self.story_id)]


async def written(stores: Stores, story_id: str) -> Writer:
    """A 45-event story, with another story's events between its own (a shared log)."""
    writer = Writer(stores, story_id)
    await write_story(writer.execute, story_id, extra_updates=30)
    other = Writer(stores, story_id + "x")
    await other.execute(other.story_id, CreateStory("another"))
    await other.summaries(3)
    await writer.summaries(5)
    return writer


async def test_history_in_the_caller_equals_the_runtime_s(reads: DirectReads, stores: Stores, unique_id):
    sid = unique_id("H")
    writer = await written(stores, sid)
    reference = await writer.log()
    assert [e.version for e in reference] == list(range(1, 46))
    assert await reads.history(sid, 1, None) == await writer.runtime.history() == reference
    for start, limit in [(1, 3), (8, None), (15, 4), (44, 10), (46, None), (200, 1)]:
        expected = reference[start - 1 :][:limit] if limit else reference[start - 1 :]
        assert await reads.history(sid, start, limit) == await writer.runtime.history(start, limit) == expected
    with pytest.raises(InvalidCommand):
        await reads.history(sid, 1, 0)


async def test_past_states_from_snapshots_equal_a_full_replay(reads: DirectReads, stores: Stores, unique_id):
    sid = unique_id("P")
    writer = await written(stores, sid)
    reference = await writer.log()
    assert len(await stores[1].refs(sid)) >= 5  # the reads below start from snapshots
    for envelope in reference:
        expected = fold(StoryState(sid), reference[: envelope.version])
        assert await reads.state_at(sid, envelope.version, None) == expected
        at_time = fold(StoryState(sid), [e for e in reference if e.timestamp <= envelope.timestamp])
        assert await reads.state_at(sid, None, envelope.timestamp) == at_time
    with pytest.raises(StoryNotFound):
        await reads.state_at(sid, None, reference[0].timestamp - timedelta(seconds=1))


async def test_an_unknown_story_is_not_found(reads: DirectReads, stores: Stores, unique_id):
    sid = unique_id("U")
    for read in (reads.history(sid, 1, None), reads.history(sid, 5, 2), reads.state_at(sid, 1, None)):
        with pytest.raises(StoryNotFound):
            await read
    with pytest.raises(StoryNotFound):
        await reads.live_state(sid)


async def test_a_held_live_state_follows_another_writer(reads: DirectReads, stores: Stores, unique_id, monkeypatch):
    sid = unique_id("L")
    writer = await written(stores, sid)
    assert await reads.live_state(sid) is None  # not held: the story actor answers, and is remembered
    reads.remember(sid, writer.runtime.state, writer.runtime.last_sequence)
    assert await reads.live_state(sid) is writer.runtime.state  # nothing appended: the same state

    other = Writer(stores, sid, "other")  # another writer of the same story (the importer, a second actor)
    await other.summaries(12, "elsewhere")
    current = await reads.live_state(sid)
    assert current == fold(StoryState(sid), await writer.log()) and current.last_summary == "elsewhere 11"
    assert await reads.live_state(sid) is current

    # Far behind: the story actor answers rather than a long fold in the caller.
    monkeypatch.setattr(direct_reads, "FOLD_LIMIT", 3)
    await other.summaries(5, "more")
    assert await reads.live_state(sid) is None


async def test_a_read_told_how_many_events_it_wants_hands_those_first_and_the_rest_when_asked(
    stores: Stores, stream_settings: Settings, unique_id
):
    from fleet_actors.adapters.jetstream.direct_get import read_payloads_by_subject
    from fleet_actors.codec import decode_events

    sid = unique_id("W")
    writer = await written(stores, sid)
    store, reference = stores[0], await writer.log()
    head = await store.last_sequence(sid)
    for wanted in (1, 4, 45, 5000):
        read = read_payloads_by_subject(
            store.connection, stream_settings.stream_name, stream_settings.story_filter(sid), 1, head,
            timeout=5.0, what="test", wanted=wanted,
        )  # fmt: skip
        batches = [payloads async for _, payloads in read]
        assert len(batches[0]) == min(wanted, 45)
        assert [e for batch in batches for e in decode_events(batch)] == reference
        envelopes = [e async for batch in store.read_envelopes(sid, wanted=wanted) for e in batch]
        assert envelopes == reference


async def test_a_read_hands_events_over_as_they_arrive_in_order_and_ends_at_the_story_s_head(
    stores: Stores, stream_settings: Settings, unique_id, monkeypatch
):
    from fleet_actors.adapters.jetstream import direct_get
    from fleet_actors.codec import decode_events

    sid = unique_id("HAND")
    writer = await written(stores, sid)
    store, reference = stores[0], await writer.log()
    head = await store.last_sequence(sid)

    async def read(wanted: int | None = None) -> list[tuple[int, list[bytes]]]:
        found = direct_get.read_payloads_by_subject(
            store.connection, stream_settings.stream_name, stream_settings.story_filter(sid), 1, head,
            timeout=5.0, what="test", wanted=wanted,
        )  # fmt: skip
        return [item async for item in found]

    # After the batch the caller wanted, batches grow fourfold (a read that stops soon takes little)
    assert [len(payloads) for _, payloads in await read(wanted=2)] == [2, 8, 32, 3]

    # Batches of 20 (the story's 45 events and the other story's 4 between them), handed over 7 at a time
    monkeypatch.setattr(direct_get, "READ_BATCH", 20)
    monkeypatch.setattr(direct_get, "HANDOFF", 7)
    handed = await read()
    assert [len(payloads) for _, payloads in handed] == [7, 7, 6, 7, 7, 6, 5]
    assert [e for _, payloads in handed for e in decode_events(payloads)] == reference
    reached = [sequence for sequence, _ in handed]
    assert reached == sorted(reached) and reached[-1] == head  # where the read surely is, exact at the end
    # A batch bounded by bytes: the server sends one message each time; every event still comes once
    monkeypatch.setattr(direct_get, "READ_MAX_BYTES", 1)
    handed = await read()
    assert len(handed) == len(reference) and [e for _, p in handed for e in decode_events(p)] == reference


async def test_a_read_hands_over_the_same_lists_through_nats_py_s_own_dispatch(
    stores: Stores, stream_settings: Settings, unique_id, monkeypatch
):
    """The sink's way (the frame scanner, or nats-py's parser and a sink) and a plain nats-py client
    (a subscription callback) hand over the same payloads in the same lists."""
    import nats
    from nats.protocol.parser import Parser

    from fleet_actors.adapters.jetstream import direct_get
    from fleet_actors.adapters.jetstream.nats_client import COMPILED, FleetNatsClient, _BulkParser

    sid = unique_id("WAYS")
    await written(stores, sid)
    store = stores[0]
    head = await store.last_sequence(sid)
    monkeypatch.setattr(direct_get, "READ_BATCH", 20)
    monkeypatch.setattr(direct_get, "HANDOFF", 7)
    parsed_by_nats_py = FleetNatsClient()
    parsed_by_nats_py._ps = Parser(parsed_by_nats_py)
    await parsed_by_nats_py.connect(stream_settings.nats_url)
    plain = await nats.connect(stream_settings.nats_url)
    assert isinstance(store.connection._ps, _BulkParser) == COMPILED
    try:
        handed = []
        for connection in (store.connection, parsed_by_nats_py, plain):
            found = direct_get.read_payloads_by_subject(
                connection, stream_settings.stream_name, stream_settings.story_filter(sid), 1, head,
                timeout=5.0, what="test",
            )  # fmt: skip
            handed.append([item async for item in found])
        assert [len(payloads) for _, payloads in handed[0]] == [7, 7, 6, 7, 7, 6, 5]
        assert handed[0] == handed[1] == handed[2]
        assert store.connection.sinks == parsed_by_nats_py.sinks == {}  # each read took its sink away
    finally:
        await parsed_by_nats_py.close()
        await plain.close()


async def test_reads_and_writes_sharing_a_connection_each_get_their_own_messages(
    stores: Stores, unique_id, monkeypatch
):
    """Twelve reads of four stories at once, in batches of 7, while a writer appends on the same
    connection: each read's messages reach its own sink, and the writer's acks reach nats-py."""
    import asyncio

    from fleet_actors.adapters.jetstream import direct_get

    monkeypatch.setattr(direct_get, "READ_BATCH", 7)
    writers = [await written(stores, unique_id(f"MIX{i}")) for i in range(4)]
    references = [await writer.log() for writer in writers]
    store = stores[0]
    busy = Writer(stores, unique_id("BUSY"))
    await busy.execute(busy.story_id, CreateStory("appending meanwhile"))

    async def read(story_id: str) -> list[EventEnvelope]:
        return [e async for batch in store.read_envelopes(story_id) for e in batch]

    reads = [read(writer.story_id) for writer in writers for _ in range(3)]
    *found, _ = await asyncio.gather(*reads, busy.summaries(30))
    assert found == [reference for reference in references for _ in range(3)]
    assert [e.version for e in await busy.log()] == list(range(1, 32))
    assert store.connection.sinks == {}


async def test_the_next_batch_is_asked_for_on_the_wire_before_a_batch_is_handed_over(
    stores: Stores, stream_settings: Settings, unique_id, monkeypatch
):
    """nats-py only queues a publish for its flusher task: unless the read lets that task run, the
    server would get the next request only once the caller has decoded this batch, and nothing
    would overlap (a 10,000-event history waited a round trip per batch)."""
    from fleet_actors.adapters.jetstream import direct_get

    sid = unique_id("AHEAD")
    await written(stores, sid)
    store = stores[0]
    monkeypatch.setattr(direct_get, "READ_BATCH", 10)
    found = direct_get.read_payloads_by_subject(
        store.connection, stream_settings.stream_name, stream_settings.story_filter(sid), 1,
        await store.last_sequence(sid), timeout=5.0, what="test",
    )  # fmt: skip
    unsent = []
    async for _ in found:
        unsent.append(store.connection._pending_data_size)  # bytes published and not yet written
    assert len(unsent) >= 5 and unsent == [0] * len(unsent)


async def test_an_async_client_opens_its_log_connection_when_asked(
    stream_settings: Settings, stores: Stores, unique_id
):
    from fleet_actors.client import AsyncFleetClient

    sid = unique_id("O")
    writer = await written(stores, sid)
    client = AsyncFleetClient(stream_settings)
    try:
        await client.open_reads()
        reads = client._direct_reads()
        opened = await reads.stores()
        assert await client.history(sid) == await writer.log()
        assert client._direct_reads() is reads and await reads.stores() is opened  # the one opened first
    finally:
        await client.close()
    off = AsyncFleetClient(stream_settings.replace(direct_reads=False))
    await off.open_reads()  # nothing to open: reads go to the story actor
    assert off._reads is None


async def test_history_streams_in_batches_that_add_up_to_the_history(stores, reads, unique_id, monkeypatch):
    from fleet_actors.adapters.jetstream import direct_get

    monkeypatch.setattr(direct_get, "READ_BATCH", 10)  # 26 events: several batches
    story_id = unique_id("STREAM")
    writer = Writer(stores, story_id)
    await writer.execute(story_id, CreateStory("streamed", "d"))
    await writer.summaries(25)
    batches = [batch async for batch in reads.stream_history(story_id, 1, None)]
    assert len(batches) >= 3 and all(batches)
    assert [e for batch in batches for e in batch] == await reads.history(story_id, 1, None) == await writer.log()
    window = [e.version async for batch in reads.stream_history(story_id, 5, 12) for e in batch]
    assert window == list(range(5, 17))
    with pytest.raises(StoryNotFound):
        [batch async for batch in reads.stream_history(unique_id("none"), 1, None)]


async def test_the_asyncio_client_streams_a_history_in_the_callers_process(stores, stream_settings, unique_id):
    from fleet_actors.client import AsyncFleetClient

    story_id = unique_id("CSTREAM")
    writer = Writer(stores, story_id)
    await writer.execute(story_id, CreateStory("streamed", "d"))
    await writer.summaries(4)
    client = AsyncFleetClient(stream_settings)  # direct reads: no Ray needed for the log
    try:
        streamed = [e async for batch in client.stream_history(story_id, 2) for e in batch]
        assert streamed == (await writer.log())[1:]
        with pytest.raises(InvalidCommand):
            [b async for b in client.stream_history("bad id!")]
    finally:
        await client.close()
