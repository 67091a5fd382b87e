"""The partition feed against a real nats-server: order per partition, prompt hand-off, clean stops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from fleet_actors.adapters.jetstream import partition_feed
from fleet_actors.adapters.jetstream.partition_feed import PartitionConsumer, PartitionFeed, partition_of
from fleet_actors.errors import BackendUnavailable, ConfigurationError
from fleet_actors.settings import Settings

PARTITIONS = 3


@pytest.fixture
async def stream(settings: Settings) -> AsyncIterator[tuple[Client, str, str]]:
    tag = uuid.uuid4().hex[:8]
    nc = await nats.connect(settings.nats_url)
    name, prefix = f"FEED{tag.upper()}", f"feed{tag}"
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    yield nc, name, prefix
    await nc.jetstream().delete_stream(name)
    await nc.close()


def config(consumer: PartitionConsumer) -> ConsumerConfig:
    # A long ack wait: anything not handed back on stop would stall the tests visibly.
    return ConsumerConfig(durable_name=consumer.name, filter_subject=consumer.filter_subject,
                          ack_policy=AckPolicy.EXPLICIT, ack_wait=120)  # fmt: skip


def feed_for(
    nc: Client, stream: str, prefix: str, *, end: int | None = None, fetch_size: int = 7, on_error=None
) -> PartitionFeed:
    consumers = [PartitionConsumer(f"c-{p}", p, f"{prefix}.*.{p}") for p in range(PARTITIONS)]
    return PartitionFeed(nc, stream, consumers, config, fetch_size=fetch_size, end_sequence=end, on_error=on_error)


async def publish(nc: Client, prefix: str, count: int) -> None:
    js = nc.jetstream()
    for n in range(count):
        await js.publish(f"{prefix}.{n}.{n % PARTITIONS}", str(n).encode())


async def take(feed: PartitionFeed, count: int, *, ack: bool = True) -> list[int]:
    seen: list[int] = []
    while len(seen) < count:
        wanted = min(10, count - len(seen))  # exactly ``count``: the rest stays with the feed
        batch = await feed.next_batch(wanted, timeout=5)
        assert len(batch) <= wanted
        for msg in batch:
            seen.append(int(msg.data))
            if ack:
                await msg.ack()
    return seen


async def test_every_message_once_in_order_within_each_partition(stream):
    nc, name, prefix = stream
    await publish(nc, prefix, 60)
    feed = feed_for(nc, name, prefix)
    await feed.start()
    try:
        seen = await take(feed, 60)
    finally:
        await feed.stop()
    assert sorted(seen) == list(range(60))
    for p in range(PARTITIONS):
        mine = [n for n in seen if n % PARTITIONS == p]
        assert mine == sorted(mine)


async def test_a_lone_message_is_handed_on_without_waiting_for_a_full_batch(stream):
    nc, name, prefix = stream
    feed = feed_for(nc, name, prefix, fetch_size=100)
    await feed.start()
    try:
        await asyncio.sleep(0.3)  # the pulls are open and idle
        await publish(nc, prefix, 1)
        batch = await feed.next_batch(100, timeout=1.0)
        assert [int(m.data) for m in batch] == [0]
    finally:
        await feed.stop()


async def test_stop_hands_back_what_was_taken_but_not_processed(stream):
    nc, name, prefix = stream
    await publish(nc, prefix, 60)
    first = feed_for(nc, name, prefix)
    await first.start()
    done = await take(first, 10)
    interrupted = await first.next_batch(5, timeout=5)  # taken, then the process is "interrupted"
    first.give_back(interrupted)
    await asyncio.sleep(0.2)  # more arrives and queues up, unprocessed
    await first.stop()
    second = feed_for(nc, name, prefix)
    await second.start()
    try:
        rest = await take(second, 50)  # would wait out the 120 s ack wait if anything was lost
    finally:
        await second.stop()
    assert sorted(done + rest) == list(range(60))


async def test_end_sequence_stops_each_partition_there(stream):
    nc, name, prefix = stream
    await publish(nc, prefix, 30)
    feed = feed_for(nc, name, prefix, end=20)
    await feed.start()
    js = nc.jetstream()
    for n in range(30, 40):  # past the end
        await js.publish(f"{prefix}.{n}.{n % PARTITIONS}", str(n).encode())
    try:
        seen = await take(feed, 20)
        with pytest.raises(TimeoutError):
            await feed.next_batch(10, timeout=1.0)
        assert feed.finished() and await feed.drained()
    finally:
        await feed.stop()
    assert sorted(seen) == list(range(20))


async def test_a_consumer_with_another_filter_is_refused(stream):
    nc, name, prefix = stream
    await nc.jsm().add_consumer(name, ConsumerConfig(durable_name="c-0", filter_subject=f"{prefix}.>"))
    with pytest.raises(ConfigurationError, match="c-0"):
        await feed_for(nc, name, prefix).start()


def test_partition_of_reads_the_last_token():
    assert partition_of("proj.events.story-1.subtask_updated.13") == 13


async def test_refused_pulls_are_retried_after_pauses_and_the_feed_recovers(stream, monkeypatch):
    """JetStream answers a pull at once while it starts up or when a stream is gone: asking again at
    once would be a busy loop against a recovering server (it once sent thousands of pulls a second)."""
    monkeypatch.setattr(partition_feed, "PULL_EXPIRES", 1.0)  # requests expire during the test
    monkeypatch.setattr(partition_feed, "HEARTBEAT", 0.3)
    nc, name, prefix = stream
    pulls, errors = 0, []
    publish_unwatched = nc.publish

    async def watched(subject, *args, **kwargs):
        nonlocal pulls
        pulls += ".MSG.NEXT." in subject
        return await publish_unwatched(subject, *args, **kwargs)

    monkeypatch.setattr(nc, "publish", watched)
    feed = feed_for(nc, name, prefix, on_error=errors.append)
    await feed.start()
    try:
        await asyncio.sleep(2.5)  # idle: requests expire and are renewed, which is no error
        assert errors == []
        config = (await nc.jsm().stream_info(name)).config
        await nc.jsm().delete_stream(name)
        pulls = 0
        await asyncio.sleep(2.0)
        assert 0 < pulls <= PARTITIONS * 4  # pauses of 0.5, 1, 2 s: two or three pulls each
        assert errors and all(isinstance(e, BackendUnavailable) for e in errors)
        assert "consumer or its stream is gone" in str(errors[-1])
        with pytest.raises(BackendUnavailable, match="consumer c-0"):
            await feed.drained()  # a typed error for the rebuild's caller, not nats-py's
        await nc.jsm().add_stream(config)  # empty, without consumers: the feed creates them again
        await publish(nc, prefix, 6)
        assert sorted(await asyncio.wait_for(take(feed, 6), 15)) == list(range(6))
    finally:
        await feed.stop()


async def test_a_consumer_deleted_under_the_feed_is_re_created_from_its_configured_start(stream):
    """Nothing published meanwhile is lost; what was read before comes again (readers skip repeats)."""
    nc, name, prefix = stream
    feed = feed_for(nc, name, prefix)
    await feed.start()
    try:
        await publish(nc, prefix, 6)
        assert sorted(await asyncio.wait_for(take(feed, 6), 15)) == list(range(6))
        for consumer in feed.consumers:
            await nc.jsm().delete_consumer(name, consumer.name)
        js = nc.jetstream()
        for n in range(6, 12):
            await js.publish(f"{prefix}.{n}.{n % PARTITIONS}", str(n).encode())
        assert sorted(await asyncio.wait_for(take(feed, 12), 15)) == list(range(12))
        assert sorted(c.name for c in await nc.jsm().consumers_info(name)) == sorted(feed.names)
    finally:
        await feed.stop()
