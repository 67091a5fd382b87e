"""The user projection runner on the in-memory ports: order per story, nothing applied twice (own
checkpoint or the checkpoint store), gaps caught up from the log, a poison event parks only its
story, dlq skip releases it (milliseconds, no servers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from fleet_actors.adapters.memory import (
    InMemoryDeadLetterIndex,
    InMemoryEventStore,
    InMemoryProjectionCheckpoints,
)
from fleet_actors.codec import encode_event
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import BackendUnavailable, ConfigurationError
from fleet_actors.ports.checkpoints import ArchivedRow
from fleet_actors.projections import api
from fleet_actors.projections.dead_letters import DeadLetters
from fleet_actors.projections.policy import ProjectorPolicy
from fleet_actors.projections.runner import ProjectionRunner, verify_projection
from fleet_actors.settings import Settings
from tests.contracts.read_models_contract import new_story_id, story_events
from tests.unit.test_projector_exactly_once import ParkedInMemory

POLICY = ProjectorPolicy(batch_size=50, max_deliver=2, backoff_initial=0.01, backoff_max=0.01)


@dataclass(frozen=True)
class Seq:
    stream: int


@dataclass(frozen=True)
class Meta:
    sequence: Seq
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Msg:
    subject: str
    data: bytes
    metadata: Meta


class FakeFeed:
    """Acknowledged deliveries are gone; retried ones come back in the next batch."""

    def __init__(self, msgs: list[Msg]) -> None:
        self.pending = list(msgs)
        self.acked: list[Msg] = []

    names: list[str] = []

    async def start(self) -> None:
        pass

    async def next_batch(self, max_msgs: int, timeout: float) -> list[Msg]:
        if not self.pending:
            raise TimeoutError
        batch, self.pending = self.pending[:max_msgs], self.pending[max_msgs:]
        return batch

    def finished(self) -> bool:
        return not self.pending

    async def drained(self) -> bool:
        return not self.pending

    async def acknowledge(self, deliveries: Sequence[Msg]) -> None:
        self.acked.extend(deliveries)

    async def retry_later(self, deliveries: Sequence[Msg], delay: float) -> None:
        self.pending = list(deliveries) + self.pending

    async def still_working(self, deliveries: Sequence[Msg]) -> None:
        pass

    def give_back(self, deliveries: Sequence[Msg]) -> None:
        self.pending = list(deliveries) + self.pending

    async def stop(self) -> None:
        pass


class FakeFeeds:
    def __init__(self) -> None:
        self.feed = FakeFeed([])
        self.started_at: dict[str, int | None] = {}

    def partitions(self, consumers, start_of, **_: object) -> FakeFeed:
        self.started_at = {c.name: start_of(c) for c in consumers}
        return self.feed

    async def close(self) -> None:
        pass


class Recording:
    """A projection that remembers every event it was given, per story, in order."""

    name = "recording"
    version = 1

    def __init__(self, poison: set[str] = frozenset(), own_checkpoint: bool = False) -> None:
        self.seen: dict[str, list[int]] = {}
        self.poison = poison
        self.calls = 0
        self.down = 0
        if own_checkpoint:
            self.applied_versions = self._applied_versions

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise BackendUnavailable("target down")
        for envelope in (e for events in batch.values() for e in events):
            if envelope.event_id in self.poison:
                raise ValueError(f"cannot apply {envelope.event_id}")
        for story_id, events in batch.items():
            self.seen.setdefault(story_id, []).extend(e.version for e in events)

    async def _applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        return {s: max(self.seen.get(s, [0])) for s in story_ids}

    async def verify(self, story_id: str, events: Sequence[EventEnvelope]) -> list[str]:
        expected = [e.version for e in events]
        return [] if self.seen.get(story_id) == expected else [f"{story_id}: {self.seen.get(story_id)} != {expected}"]


def subject(story_id: str, partition: int = 0) -> str:
    return f"ctx.{story_id}.evt.{partition}"


def deliveries(events: Sequence[EventEnvelope], first_sequence: int = 1) -> list[Msg]:
    return [Msg(subject(e.story_id), encode_event(e), Meta(Seq(first_sequence + i))) for i, e in enumerate(events)]


def runner(projection, store=None, archive=None) -> tuple[ProjectionRunner, FakeFeeds]:
    feeds = FakeFeeds()
    r = ProjectionRunner(
        projection, Settings(partitions=1, projectors=1), feeds=feeds, store=store or InMemoryEventStore(),  # type: ignore[arg-type]
        checkpoints=InMemoryProjectionCheckpoints(), archive=archive, policy=POLICY,
        dead_letters=DeadLetters(ParkedInMemory(), InMemoryDeadLetterIndex()),
    )  # fmt: skip
    return r, feeds


async def drain(r: ProjectionRunner) -> None:
    assert r.feed is not None
    while True:
        try:
            msgs = await r.feed.next_batch(POLICY.batch_size, 0)
        except TimeoutError:
            return
        await r.process(msgs)


async def logged(store: InMemoryEventStore, story_id: str, count: int) -> list[EventEnvelope]:
    events = story_events(story_id, count)
    await store.append(story_id, 0, events)
    return events


@pytest.mark.parametrize("own_checkpoint", [False, True])
async def test_redeliveries_and_out_of_order_copies_are_applied_once(own_checkpoint):
    store = InMemoryEventStore()
    a, b = new_story_id(), new_story_id()
    events = await logged(store, a, 5) + await logged(store, b, 3)
    projection = Recording(own_checkpoint=own_checkpoint)
    r, feeds = runner(projection, store)
    await r.start()
    assert (
        set(feeds.started_at) == {"proj-recording-v1-partition-0"}
        and feeds.started_at["proj-recording-v1-partition-0"] is None
    )  # from the first event
    feeds.feed.pending = deliveries(events) + deliveries(events[2:4] + events[:2])
    await drain(r)
    assert projection.seen == {a: [1, 2, 3, 4, 5], b: [1, 2, 3]}
    assert r.progress.applied == 8 and r.progress.skipped_duplicates == 4
    assert await verify_projection(projection, store, [a, b]) == {}
    registered = await r.checkpoints.registered()
    assert registered["recording-v1"]["own_checkpoint"] is own_checkpoint


async def test_a_story_behind_the_events_at_hand_is_caught_up_from_the_log():
    store = InMemoryEventStore()
    a = new_story_id()
    events = await logged(store, a, 6)
    projection = Recording()
    r, feeds = runner(projection, store)
    await r.start()
    feeds.feed.pending = deliveries(events[:2]) + deliveries(events[4:])  # 3 and 4 never delivered
    await drain(r)
    assert projection.seen == {a: [1, 2, 3, 4, 5, 6]} and r.progress.healed_from_log == 2


async def test_an_outage_of_the_target_is_waited_out_not_parked():
    store = InMemoryEventStore()
    a = new_story_id()
    events = await logged(store, a, 3)
    projection = Recording()
    projection.down = 3
    r, feeds = runner(projection, store)
    await r.start()
    feeds.feed.pending = deliveries(events)
    import asyncio

    await r.process_until_done(await feeds.feed.next_batch(50, 0), asyncio.Event())
    assert projection.seen == {a: [1, 2, 3]} and r.progress.parked == 0


async def test_a_poison_event_parks_only_its_story_and_skip_releases_it():
    store = InMemoryEventStore()
    a, b = new_story_id(), new_story_id()
    events_a, events_b = await logged(store, a, 5), await logged(store, b, 4)
    projection = Recording(poison={events_a[2].event_id})
    r, feeds = runner(projection, store)
    await r.start()
    feeds.feed.pending = deliveries(events_a + events_b)
    await drain(r)
    assert projection.seen[b] == [1, 2, 3, 4]
    assert projection.seen[a] == [1, 2]  # the events before the poison one went through
    held = await r.dead_letters.held()
    assert list(held) == [a] and held[a].version == 3 and held[a].projection == "recording-v1"
    assert held[a].consumer == "proj-recording-v1-partition-0"
    # Later events of the held story are acknowledged, not applied; the others go on.
    more = story_events(a, 7)[5:]
    await store.append(a, 5, more)
    feeds.feed.pending = deliveries(more, 100)
    await drain(r)
    assert projection.seen[a] == [1, 2]
    await r.dead_letters.request_release(a, "skip")
    await r._apply_releases()
    assert projection.seen[a] == [1, 2, 3, 4, 5, 6, 7] and await r.dead_letters.held() == {}


async def test_catch_up_reads_the_archive_first_then_starts_the_consumers_after_it():
    store = InMemoryEventStore()
    a = new_story_id()
    events = await logged(store, a, 6)

    class Archive:
        async def last_sequence(self) -> int:
            return 4

        async def rows(self, partitions, after, up_to):
            rows = [ArchivedRow(i + 1, subject(a), encode_event(e)) for i, e in enumerate(events[:4])]
            yield [row for row in rows if after < row.sequence <= up_to]

    projection = Recording()
    r, feeds = runner(projection, store, archive=Archive())
    await r.start()
    assert projection.seen == {a: [1, 2, 3, 4]} and r.progress.archive_through == 4
    assert feeds.started_at == {"proj-recording-v1-partition-0": 5}
    feeds.feed.pending = deliveries(events[3:], 4)  # the seam, with one overlapping event
    await drain(r)
    assert projection.seen == {a: [1, 2, 3, 4, 5, 6]}
    await r.publish_progress(force=True)
    # Restarted: the archive is not read again (its progress says it was done).
    again = ProjectionRunner(
        projection, r.settings, feeds=FakeFeeds(), store=store, checkpoints=r.checkpoints,  # type: ignore[arg-type]
        dead_letters=r.dead_letters, archive=Archive(), policy=POLICY,
    )  # fmt: skip
    await again.start()
    assert again.progress.archive_applied == 0 and again.progress.skipped_duplicates == 0


def test_registration_by_name():
    api.unregister("recording")
    projection = api.register(Recording)
    assert api.registered() == ["recording"] and api.get("recording") is not projection  # a fresh instance
    with pytest.raises(ConfigurationError):
        api.register(Recording)
    api.unregister("recording")

    class Bad:
        name = "has space"
        version = 1

        async def apply(self, batch) -> None: ...

    with pytest.raises(ConfigurationError, match="name"):
        api.register(Bad())
    assert api.consumer_prefix(Recording()) == "proj-recording-v1"


async def test_a_poison_event_read_from_the_log_is_parked_and_skipped_by_its_version():
    store = InMemoryEventStore()
    a = new_story_id()
    events = await logged(store, a, 5)
    projection = Recording(poison={events[2].event_id})
    r, feeds = runner(projection, store)
    await r.start()
    feeds.feed.pending = deliveries(events[4:], 5)  # 1-4 never delivered: read from the log, 3 fails
    await drain(r)
    held = await r.dead_letters.held()
    assert projection.seen == {a: [1, 2]} and held[a].version == 3 and held[a].stream_sequence == 5
    await r.dead_letters.request_release(a, "skip")
    await r._apply_releases()
    assert projection.seen == {a: [1, 2, 3, 4, 5]} and await r.dead_letters.held() == {}


def test_a_projection_is_loaded_from_the_current_directory_or_refused_in_one_line(tmp_path, monkeypatch):
    from fleet_actors.errors import ConfigurationError
    from fleet_actors.projections.api import load, unregister

    (tmp_path / "my_projections.py").write_text(
        "class Counting:\n    name = 'counting'\n    version = 3\n    async def apply(self, batch):\n        pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    try:
        assert load("my_projections:Counting").version == 3  # as a console script would, without "" on sys.path
    finally:
        unregister("counting")
    with pytest.raises(ConfigurationError, match="no module 'nowhere'"):
        load("nowhere:Counting")
    with pytest.raises(ConfigurationError, match="has no 'Missing'"):
        load("my_projections:Missing")
