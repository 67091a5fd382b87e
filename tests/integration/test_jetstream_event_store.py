"""The JetStream adapter against a real nats-server: the shared contract plus JetStream specifics."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import pytest
from nats.js.api import StoreCompression

from fleet_actors.adapters.jetstream import JetStreamEventStore, ensure_event_stream
from fleet_actors.adapters.jetstream.connection import event_stream_config
from fleet_actors.errors import BackendUnavailable, ConcurrencyConflict, ConfigurationError
from fleet_actors.settings import Settings
from tests.unit.event_store_contract import EventStoreContract, envelope


@pytest.fixture
async def store(settings):
    store = await JetStreamEventStore.connect(settings)
    yield store
    await store.close()


class TestJetStreamEventStore(EventStoreContract):
    async def test_subjects_are_per_story_and_event_type(self, store, settings, story_id):
        await store.append(story_id, 0, [envelope(story_id, 1)])
        info = await store.connection.jsm().stream_info(settings.stream_name, subjects_filter=f"*.*.{story_id}.>")
        ((subject, count),) = info.state.subjects.items()
        prefix, partition = subject.rsplit(".", 1)
        assert (prefix, count) == (f"context.events.{story_id}.summary_recorded", 1)
        assert 0 <= int(partition) < settings.partitions

    async def test_sibling_event_type_cannot_slip_past_the_check(self, store, story_id):
        # The plain expected-subject-sequence header would only check one subject; ours covers all.
        from fleet_actors.domain.events import SubtaskCreated

        await store.append(story_id, 0, [envelope(story_id, 1)])
        with pytest.raises(ConcurrencyConflict):
            await store.append(story_id, 0, [envelope(story_id, 1, SubtaskCreated("T1", "x"))])

    async def test_failed_batch_leaves_nothing(self, store, story_id):
        await store.append(story_id, 0, [envelope(story_id, 1)])
        batch = [envelope(story_id, v) for v in (2, 3, 4)]
        with pytest.raises(ConcurrencyConflict):
            await store.append(story_id, 0, batch)
        assert [e.envelope.version for e in await store.read_all(story_id)] == [1]

    async def test_large_atomic_batch(self, store, story_id):
        result = await store.append(story_id, 0, [envelope(story_id, v) for v in range(1, 501)])
        events = await store.read_all(story_id)
        assert len(events) == 500 and events[-1].sequence == result.last_sequence

    async def test_reading_more_than_one_read_batch(self, store, story_id):
        seq = 0
        for start in range(1, 2501, 500):
            seq = (
                await store.append(story_id, seq, [envelope(story_id, v) for v in range(start, start + 500)])
            ).last_sequence
        assert [e.envelope.version for e in await store.read_all(story_id)] == list(range(1, 2501))


async def test_stream_declared_with_the_documented_settings(settings):
    nc = await nats.connect(settings.nats_url)
    try:
        await ensure_event_stream(nc, settings)
        await ensure_event_stream(nc, settings)  # idempotent
        config = (await nc.jsm().stream_info(settings.stream_name)).config
        assert config.subjects == ["context.events.>"]
        assert (config.max_age or 0) == 0, "events must not age out by default"
        assert config.allow_atomic and config.allow_direct
        assert config.compression in ("s2", StoreCompression.S2)
        assert config.duplicate_window == pytest.approx(120)
        assert config.subject_transform.dest.endswith(f"{{{{partition({settings.partitions},1)}}}}")
    finally:
        await nc.close()


async def test_existing_stream_settings_are_brought_up_to_date(settings):
    name = "T" + uuid.uuid4().hex[:8].upper()
    custom = settings.replace(stream_name=name, subject_prefix=f"t{name.lower()}.events")
    nc = await nats.connect(settings.nats_url)
    try:
        stale = event_stream_config(custom)
        stale.duplicate_window = 30
        stale.allow_atomic = False
        await nc.jsm().add_stream(stale)
        await ensure_event_stream(nc, custom)
        config = (await nc.jsm().stream_info(name)).config
        assert config.allow_atomic and config.duplicate_window == pytest.approx(120)
    finally:
        await nc.jsm().delete_stream(name)
        await nc.close()


async def test_a_reader_creates_a_missing_stream_but_never_changes_one(settings):
    name = "T" + uuid.uuid4().hex[:8].upper()
    custom = settings.replace(stream_name=name, subject_prefix=f"t{name.lower()}.events")
    reader = await JetStreamEventStore.connect(custom, update_stream=False)
    try:
        jsm = reader.connection.jsm()
        assert (await jsm.stream_info(name)).config.duplicate_window == pytest.approx(120)
        other = custom.replace(duplicate_window=30)  # e.g. a tool run with other settings
        await (await JetStreamEventStore.connect(other, update_stream=False)).close()
        assert (await jsm.stream_info(name)).config.duplicate_window == pytest.approx(120)
        await (await JetStreamEventStore.connect(other)).close()  # a writer brings it to its settings
        assert (await jsm.stream_info(name)).config.duplicate_window == pytest.approx(30)
    finally:
        await reader.connection.jsm().delete_stream(name)
        await reader.close()


async def test_changing_the_partition_count_is_refused(settings):
    nc = await nats.connect(settings.nats_url)
    try:
        with pytest.raises(ConfigurationError, match="FLEET_PARTITIONS"):
            await ensure_event_stream(nc, settings.replace(partitions=settings.partitions * 2))
    finally:
        await nc.close()


def test_max_age_refused_unless_forced():
    with pytest.raises(ConfigurationError, match="FORCE"):
        Settings(stream_max_age=30 * 86400)
    assert Settings(stream_max_age=30 * 86400, stream_max_age_force=True).stream_max_age > 0


async def test_nothing_acknowledged_is_lost_when_nats_restarts(local_stack, settings):
    store = await JetStreamEventStore.connect(settings)
    story_id = "R" + uuid.uuid4().hex[:12]
    try:
        seq = (await store.append(story_id, 0, [envelope(story_id, 1)])).last_sequence
        local_stack.nats.restart()
        # The client reconnects by itself; appends continue against the same log.
        for _ in range(50):
            try:
                seq = (await store.append(story_id, seq, [envelope(story_id, 2)])).last_sequence
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert [e.envelope.version for e in await store.read_all(story_id)] == [1, 2]
    finally:
        await store.close()


async def test_an_append_while_nats_is_unreachable_fails_without_landing_later(local_stack, settings):
    # Sent while the client reconnects, the events would wait in its buffer and land whenever the
    # server came back, after the caller had been told the outcome was unknown: nothing is sent.
    quick = settings.replace(nats_timeout=1.0)
    store = await JetStreamEventStore.connect(quick)
    story_id = "U" + uuid.uuid4().hex[:12]
    try:
        seq = (await store.append(story_id, 0, [envelope(story_id, 1)])).last_sequence
        local_stack.nats.kill()
        try:
            for _ in range(50):
                if not store.connection.is_connected:
                    break
                await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="nothing was appended"):
                await store.append(story_id, seq, [envelope(story_id, 2)])
            assert time.monotonic() - started < 3 * quick.nats_timeout  # not three timed-out attempts
        finally:
            local_stack.nats.start().wait_ready()
        for _ in range(100):
            if store.connection.is_connected:
                break
            await asyncio.sleep(0.1)
        await store.connection.flush()
        assert [e.envelope.version for e in await store.read_all(story_id)] == [1]
        assert (await store.append(story_id, seq, [envelope(story_id, 2)])).last_sequence > seq
    finally:
        await store.close()
