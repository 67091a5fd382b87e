"""Story reads go up to the head the stream leader reports, even when a replica behind answers first."""

from __future__ import annotations

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
    assert calls == [(1, HEAD), (5, HEAD), (5, HEAD)]  # each attempt from where the last one ended


async def test_a_replica_that_stays_behind_is_an_outage_not_a_short_history(store, monkeypatch):
    read, _ = replica_reads(caught_up_after=99)
    monkeypatch.setattr(event_store, "read_by_subject", read)
    with pytest.raises(BackendUnavailable, match="behind the stream leader"):
        [sequence async for sequence, _ in store.read_raw("S1")]
