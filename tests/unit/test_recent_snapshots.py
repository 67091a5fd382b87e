"""A reader's snapshot store (RecentSnapshots) remembers each story's listing: temporal reads find the
same snapshot as the port's own rule, a snapshot saved since is found, and one dropped since is not
relied on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet_actors.adapters.memory.snapshot_store import InMemorySnapshotStore
from fleet_actors.direct_reads import RecentSnapshots
from fleet_actors.domain.events import EventEnvelope, SummaryRecorded
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.errors import EventDecodeError
from fleet_actors.ports.snapshot_store import Snapshot, SnapshotRef

T0 = datetime(2026, 6, 1, tzinfo=UTC)


class CountingStore(InMemorySnapshotStore):
    """Counts listings; keeps a story's newest ``keep`` snapshots, as the snapshot stream does."""

    def __init__(self, keep: int = 100) -> None:
        super().__init__()
        self.listings, self.keep, self.gone = 0, keep, set[int]()

    async def save(self, snapshot: Snapshot) -> None:
        await super().save(snapshot)
        refs = self._refs[snapshot.story_id]
        self.gone.update(ref.position for ref in refs[: -self.keep])
        del refs[: -self.keep]

    async def refs(self, story_id: str) -> list[SnapshotRef]:
        self.listings += 1
        return await super().refs(story_id)

    async def load(self, ref: SnapshotRef) -> Snapshot:
        if ref.position in self.gone:
            raise EventDecodeError(f"snapshot {ref.position} is gone")
        return await super().load(ref)


def story(versions: int) -> list[EventEnvelope]:
    return [
        EventEnvelope(f"e{v}", "S1", v, T0 + timedelta(seconds=v), SummaryRecorded(f"s{v}"))
        for v in range(1, versions + 1)
    ]


async def snapshot_every(store: InMemorySnapshotStore, events: list[EventEnvelope], every: int, upto: int) -> None:
    for version in range(every, upto + 1, every):
        await store.save(Snapshot(fold(StoryState("S1"), events[:version]), version))


async def test_points_below_the_newest_snapshot_listed_need_no_new_listing():
    events, inner = story(1000), CountingStore()
    await snapshot_every(inner, events, 10, 1000)
    recent, listings = RecentSnapshots(inner, keep=2), 0
    for version in (995, 15, 512, 999, 37):
        before = inner.listings
        found = await recent.latest("S1", max_version=version)
        listings += inner.listings - before
        expected = await inner.latest("S1", max_version=version)
        assert found is not None and expected is not None
        assert found.version <= version and found.state == fold(StoryState("S1"), events[: found.version])
        assert found.version >= expected.version - 500  # a held older one only when folding less than a decode
    at = T0 + timedelta(seconds=333, milliseconds=500)
    before = inner.listings
    by_time = await recent.latest("S1", at=at)
    assert by_time is not None and by_time.state.updated_at is not None and by_time.state.updated_at <= at
    assert (listings, inner.listings - before) == (1, 0)  # listed once, for the first read


async def test_a_snapshot_saved_after_the_listing_is_found():
    events, inner = story(300), CountingStore()
    await snapshot_every(inner, events, 10, 200)
    recent = RecentSnapshots(inner, keep=0)  # nothing decoded is held: each read takes the snapshot it finds
    assert (await recent.latest("S1", max_version=150)).version == 150  # type: ignore[union-attr]
    for version in range(210, 301, 10):
        await inner.save(Snapshot(fold(StoryState("S1"), events[:version]), version))
    assert (await recent.latest("S1", max_version=295)).version == 290  # type: ignore[union-attr]
    assert (await recent.latest("S1", at=T0 + timedelta(seconds=300))).version == 300  # type: ignore[union-attr]


async def test_a_snapshot_dropped_since_the_listing_is_not_relied_on():
    events, inner = story(400), CountingStore(keep=5)
    await snapshot_every(inner, events, 10, 100)  # kept: 60..100
    recent = RecentSnapshots(inner, keep=0)  # nothing decoded is held: every read loads
    assert (await recent.latest("S1", max_version=65)).version == 60  # type: ignore[union-attr]
    await snapshot_every(inner, events, 10, 400)  # kept now: 360..400; the listing held is stale
    assert await recent.latest("S1", max_version=65) is None  # none left at or before 65: full replay
    found = await recent.latest("S1", max_version=375)
    assert found is not None and found.version == 370


async def test_a_snapshot_decoded_next_to_a_held_one_shares_its_equal_values():
    from fleet_actors.loadgen.histories import story_history

    events = story_history("S1", 800, start=T0)
    inner = CountingStore()
    for version in (200, 800):  # further apart than a reader folds from a held one
        await inner.save(Snapshot(fold(StoryState("S1"), events[:version]), version))
    recent = RecentSnapshots(inner)
    older = await recent.latest("S1", max_version=250)
    newer = await recent.latest("S1", max_version=800)
    assert older is not None and newer is not None and (older.version, newer.version) == (200, 800)
    assert newer.state == fold(StoryState("S1"), events)  # the same state, values shared or not
    shared = [key for key, value in newer.state.subtasks.items() if older.state.subtasks.get(key) is value]
    unchanged = [key for key, value in newer.state.subtasks.items() if older.state.subtasks.get(key) == value]
    assert shared == unchanged and shared  # every equal value is the held one, and there are some
    kept = len(older.state.milestones)  # append-only: the older ones come back as held
    assert kept and all(a is b for a, b in zip(newer.state.milestones[:kept], older.state.milestones, strict=True))
