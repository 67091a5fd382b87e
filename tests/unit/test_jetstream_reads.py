"""Story reads go up to the head the stream leader reports, even when a replica behind answers first."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import pytest

from fleet_actors.adapters.jetstream import event_store
from fleet_actors.adapters.jetstream.event_store import JetStreamEventStore
from fleet_actors.errors import BackendUnavailable
from fleet_actors.settings import Settings

HEAD = 7
STORED = [1, 3, 4, 7]  # the story's stream sequences (other stories hold the rest)


def replica_reads(caught_up_after: int):
    """read_by_subject as replicas answer it: the first ``caught_up_after`` reads lack the newest event."""
    calls = []

    async def read(nc, stream, subject_filter, first, last, *, timeout, what):
        calls.append((first, last))
        newest = last if len(calls) > caught_up_after else 4
        for sequence in STORED:
            if first <= sequence <= min(last, newest):
                yield SimpleNamespace(headers={"Nats-Sequence": str(sequence)}, data=f"e{sequence}".encode())

    return read, calls


@pytest.fixture
def store(monkeypatch):
    nc = SimpleNamespace(jetstream=lambda timeout: None, jsm=lambda timeout: None)
    store = JetStreamEventStore(nc, Settings())

    async def head(story_id: str) -> int:
        return HEAD

    monkeypatch.setattr(store, "last_sequence", head)
    monkeypatch.setattr(event_store, "READ_BEHIND_PAUSE", 0.001)
    return store


async def test_a_read_that_a_replica_behind_ended_early_reads_on_to_the_head(store, monkeypatch):
    read, calls = replica_reads(caught_up_after=2)
    monkeypatch.setattr(event_store, "read_by_subject", read)
    assert [sequence async for sequence, _ in store.read_raw("S1")] == STORED
    # The first read starts while the head is asked for (unbounded); each later one goes from where
    # the last one ended, up to the head reported.
    assert calls == [(1, event_store.UNKNOWN_HEAD), (5, HEAD), (5, HEAD)]


async def test_a_read_stopped_early_leaves_no_head_lookup_behind(store, monkeypatch):
    read, _ = replica_reads(caught_up_after=0)
    monkeypatch.setattr(event_store, "read_by_subject", read)
    lookups = []

    async def slow_head() -> int:
        await asyncio.sleep(30)
        return HEAD

    def head(story_id: str):
        lookups.append(slow_head())
        return lookups[-1]

    monkeypatch.setattr(store, "last_sequence", head)
    reads = store.read_raw("S1")
    assert (await anext(reads))[0] == 1
    await reads.aclose()
    [lookup] = lookups
    for _ in range(100):  # the cancelled lookup ends on its next turn of the loop, not after its 30 s
        if inspect.getcoroutinestate(lookup) == inspect.CORO_CLOSED:
            break
        await asyncio.sleep(0.01)
    assert inspect.getcoroutinestate(lookup) == inspect.CORO_CLOSED


async def test_a_failed_head_lookup_fails_the_read(store, monkeypatch):
    read, _ = replica_reads(caught_up_after=0)
    monkeypatch.setattr(event_store, "read_by_subject", read)

    async def no_head(story_id: str) -> int:
        raise BackendUnavailable("reading story S1: NATS is unreachable")

    monkeypatch.setattr(store, "last_sequence", no_head)
    with pytest.raises(BackendUnavailable, match="unreachable"):
        [sequence async for sequence, _ in store.read_raw("S1")]


async def test_a_replica_that_stays_behind_is_an_outage_not_a_short_history(store, monkeypatch):
    read, _ = replica_reads(caught_up_after=99)
    monkeypatch.setattr(event_store, "read_by_subject", read)
    with pytest.raises(BackendUnavailable, match="behind the stream leader"):
        [sequence async for sequence, _ in store.read_raw("S1")]
