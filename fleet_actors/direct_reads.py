"""Reads of the log in the caller's process: FleetClient's history, temporal reads and live-state check.

A story's history or past state needs no story actor: handing 10,000 decoded events across one
costs more than reading them (docs/benchmarks.md, reads). :class:`DirectReads` holds the caller's
own connection to the log (opened on first use, closed with the client) and the live states it was
handed, each with the log position it is current at: ``get_story`` asks the log for the story's head
(one call) and answers from memory while nothing was appended, folds what was appended since (a
few events), and asks the story actor only for a story it does not hold or one far behind.

With ``FLEET_DIRECT_READS=0`` (a ray:// caller without access to NATS) the client sends these reads
to the story actor as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from fleet_actors.application.story_reads import read_history, read_state_at, stream_history
from fleet_actors.codec.collector import collector_paused
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import StateBuilder
from fleet_actors.errors import EventDecodeError, StoryNotFound
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.snapshot_store import Snapshot, SnapshotRef, SnapshotStore
from fleet_actors.settings import Settings

T = TypeVar("T")

#: live states a client keeps (each as large as its story's state)
LIVE_STATES = 64
#: events appended since a held state that are folded in the caller; beyond, the actor answers
FOLD_LIMIT = 500
#: decoded snapshots a client keeps for temporal reads (each as large as its story's state)
SNAPSHOTS_KEPT = 8
#: a temporal read starts from a decoded snapshot it holds rather than decode a newer one up to
#: this many events closer (decoding a 10,000-event story's snapshot: ~25 ms; folding 500 events: less)
REUSE_EVENTS = 500


class DirectReads:
    """One caller's connection to the log and the live states it holds. Use it from one event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stores: tuple[EventStore, SnapshotStore] | None = None
        self._opening: asyncio.Lock | None = None
        #: story id -> (state, a log sequence at or below which every event of the story is in it)
        self._live: OrderedDict[str, tuple[StoryState, int]] = OrderedDict()

    async def stores(self) -> tuple[EventStore, SnapshotStore]:
        if self._stores is None:
            self._opening = self._opening or asyncio.Lock()
            async with self._opening:
                if self._stores is None:
                    from fleet_actors.composition import open_reader_stores

                    store, snapshots = await open_reader_stores(self._settings)
                    self._stores = store, RecentSnapshots(snapshots)
        return self._stores

    async def history(self, story_id: str, from_version: int, limit: int | None) -> list[EventEnvelope]:
        store, snapshots = await self.stores()
        return await read_history(store, snapshots, story_id, from_version, limit, must_exist=True)

    async def stream_history(
        self, story_id: str, from_version: int, limit: int | None
    ) -> AsyncGenerator[list[EventEnvelope], None]:
        store, snapshots = await self.stores()
        async with contextlib.aclosing(
            stream_history(store, snapshots, story_id, from_version, limit, must_exist=True)
        ) as batches:
            async for batch in batches:
                yield batch

    async def state_at(self, story_id: str, version: int | None, at: datetime | None) -> StoryState:
        store, snapshots = await self.stores()
        # The whole read with the collector paused (codec/collector.py), not only its decoding: a
        # collection between its parts would promote the read's live temporaries (a decoded batch,
        # the fold's states) to older generations, and their pile-up is what makes full
        # collections (probe: two of 200 reads with a 130-140 ms one inside, against none). Other
        # tasks of the loop run with it paused meanwhile; it is back on when the read ends (or
        # its coroutine is closed).
        with collector_paused():
            return await read_state_at(store, snapshots, story_id, version=version, at=at)

    async def live_state(self, story_id: str) -> StoryState | None:
        """The story's state as of the log's head now, from what this client holds; None when the story
        actor must answer (:meth:`remember` its answer). StoryNotFound if the log has no such story."""
        store, _ = await self.stores()
        head = await store.last_sequence(story_id)
        if head == 0:
            raise StoryNotFound(story_id)
        held = self._live.get(story_id)
        if held is None:
            return None
        state, sequence = held
        if head != sequence:
            builder, folded = StateBuilder(state), 0
            # From the held position on; events it already holds (a read may pass the head it
            # was given) are recognised by their version. Past FOLD_LIMIT the actor answers: the
            # read asks for no more than that first.
            async with contextlib.aclosing(store.read_envelopes(story_id, sequence, wanted=FOLD_LIMIT + 1)) as batches:
                async for batch in batches:
                    for envelope in batch:
                        if envelope.version > builder.version:
                            builder.add(envelope)
                            folded += 1
                    if folded > FOLD_LIMIT:
                        return None
            state = builder.state()
            self.remember(story_id, state, head)
        self._live.move_to_end(story_id)
        return state

    def remember(self, story_id: str, state: StoryState, sequence: int) -> None:
        """The story actor's answer, current at log sequence ``sequence``."""
        held = self._live.get(story_id)
        if held is None or held[0].version <= state.version:
            self._live[story_id] = (state, sequence)
        self._live.move_to_end(story_id)
        while len(self._live) > LIVE_STATES:
            self._live.popitem(last=False)

    async def close(self) -> None:
        stores, self._stores = self._stores, None
        self._live.clear()
        if stores is not None:
            with contextlib.suppress(Exception):
                await stores[0].close()


class RecentSnapshots(SnapshotStore):
    """A snapshot store that keeps the last few snapshots it decoded, and each story's listing: a
    snapshot never changes once saved, decoding a 10,000-event story's state costs more than the rest
    of a temporal read, and listing a story's snapshots (an ordered consumer over their headers) cost
    a temporal read 6-15 ms of its ~20."""

    def __init__(self, inner: SnapshotStore, keep: int = SNAPSHOTS_KEPT, listings: int = LIVE_STATES) -> None:
        self._inner, self._keep, self._listings = inner, keep, listings
        self._decoded: OrderedDict[tuple[str, int], Snapshot] = OrderedDict()
        #: story id -> its snapshots as last listed, oldest first
        self._listed: OrderedDict[str, list[SnapshotRef]] = OrderedDict()

    async def save(self, snapshot: Snapshot) -> None:
        await self._inner.save(snapshot)

    async def refs(self, story_id: str) -> list[SnapshotRef]:
        return await self._inner.refs(story_id)

    async def sequence_before(self, story_id: str, version: int) -> int:
        return await self._inner.sequence_before(story_id, version)

    async def latest(
        self, story_id: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        """The newest snapshot at or before the point, or one held that is at most ``REUSE_EVENTS``
        older: folding a few hundred more events costs less than decoding another snapshot."""
        if max_version is None and at is None:
            return await self._inner.latest(story_id)
        held = self._held_before(story_id, max_version, at)
        if held is not None and max_version is not None and max_version - held.version <= REUSE_EVENTS:
            return held  # close enough without even listing the snapshots
        refs, remembered = await self._listing(story_id, max_version, at)
        for ref in reversed(refs):
            if _past(ref, max_version, at) or (at is not None and ref.at is None):
                continue
            if held is not None and held.version >= ref.version - REUSE_EVENTS:
                return held
            try:
                return await self.load(ref)
            except EventDecodeError:
                if remembered:  # gone since it was listed (the stream keeps a story's newest few)
                    self._listed.pop(story_id, None)
                    return await self.latest(story_id, max_version=max_version, at=at)
                continue  # as the port's latest: an older one, or full replay, will do
        return held

    async def _listing(
        self, story_id: str, max_version: int | None, at: datetime | None
    ) -> tuple[list[SnapshotRef], bool]:
        """The story's snapshots, and whether from the listing remembered. A remembered listing whose
        newest snapshot lies past the point still answers: snapshots are saved in version order, so
        any saved since lies past it too and would not be chosen; an older one may have been dropped
        since (then :meth:`latest` lists again)."""
        listed = self._listed.get(story_id)
        if listed and _past(listed[-1], max_version, at):
            self._listed.move_to_end(story_id)
            return listed, True
        listed = self._listed[story_id] = await self._inner.refs(story_id)
        self._listed.move_to_end(story_id)
        while len(self._listed) > self._listings:
            self._listed.popitem(last=False)
        return listed, False

    def _nearest(self, story_id: str, version: int) -> Snapshot | None:
        """The decoded snapshot of the story held closest to ``version``."""
        held = [snapshot for (held_story, _), snapshot in self._decoded.items() if held_story == story_id]
        return min(held, key=lambda snapshot: abs(snapshot.version - version), default=None)

    def _held_before(self, story_id: str, max_version: int | None, at: datetime | None) -> Snapshot | None:
        """The newest decoded snapshot of the story at or before the point."""
        best: Snapshot | None = None
        for (held_story, _), snapshot in self._decoded.items():
            if held_story != story_id or (max_version is not None and snapshot.version > max_version):
                continue
            if at is not None and (snapshot.state.updated_at is None or snapshot.state.updated_at > at):
                continue
            if best is None or snapshot.version > best.version:
                best = snapshot
        return best

    async def load(self, ref: SnapshotRef) -> Snapshot:
        key = (ref.story_id, ref.position)
        snapshot = self._decoded.get(key)
        if snapshot is None or snapshot.version != ref.version:
            snapshot = await self._inner.load(ref)
            nearest = self._nearest(ref.story_id, snapshot.version)
            if nearest is not None:
                snapshot = dataclasses.replace(snapshot, state=shared_values(snapshot.state, nearest.state))
            self._decoded[key] = snapshot
        self._decoded.move_to_end(key)
        while len(self._decoded) > self._keep:
            self._decoded.popitem(last=False)
        return snapshot


def shared_values(state: StoryState, held: StoryState) -> StoryState:
    """``state`` with each nested value (subtask, decision, relation...) equal to the one ``held`` has
    in the same place replaced by that one.

    Two snapshots of a story a few hundred events apart hold mostly equal values, but decoded they
    are distinct objects: sharing them keeps a reader's held snapshots to little more than one
    state's memory (and its full collections short), and lets what works by identity on a story's
    successive states (the gateway's redaction memo, the snapshot encoder) treat a newly decoded
    snapshot as a state that grew from the one held."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(StoryState):
        new, old = getattr(state, field.name), getattr(held, field.name)
        if isinstance(new, dict) and isinstance(old, dict) and new:
            changes[field.name] = {key: o if (o := old.get(key)) == value else value for key, value in new.items()}
        elif isinstance(new, tuple) and isinstance(old, tuple) and new and dataclasses.is_dataclass(new[0]):
            changes[field.name] = tuple(
                o if i < len(old) and (o := old[i]) == value else value for i, value in enumerate(new)
            )
    return dataclasses.replace(state, **changes)


def _past(ref: SnapshotRef, max_version: int | None, at: datetime | None) -> bool:
    """Whether the snapshot covers events after the point (a version, or a time)."""
    return (max_version is not None and ref.version > max_version) or (
        at is not None and ref.at is not None and ref.at > at
    )


class LoopThread:
    """An event loop on a thread of its own, for the blocking client's direct reads: the NATS
    connection lives on it between calls (server pings are answered), whatever thread calls."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._running()).result()

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="fleet-direct-reads", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
