"""Reads of a story's log that need no story actor: its history and its state at a past point.

They run wherever they are called: in the story actor for its own use, and in the caller's process
(FleetClient, the gateway) through :class:`fleet_actors.client.DirectReads`, which reads the log at
the speed of the log instead of handing every event across the actor (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import datetime

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import StateBuilder
from fleet_actors.errors import InvalidCommand, StoryNotFound
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.snapshot_store import SnapshotStore

#: the first batch of a temporal read by time (the events between a snapshot and the point: up to
#: the snapshots' interval, 100 by default, or a few hundred from a snapshot a reader reuses)
TIME_READ_BATCH = 250


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InvalidCommand("limit must be at least 1", field="limit")


def check_point(version: int | None, at: datetime | None) -> None:
    """A temporal read names exactly one point: a version (>= 1) or a timezone-aware time."""
    if (version is None) == (at is None):
        raise InvalidCommand("give exactly one of version or at", field="at")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidCommand("version must be a positive integer", field="version")
    if at is not None and at.tzinfo is None:
        raise InvalidCommand("at must be timezone-aware (e.g. UTC)", field="at")


async def read_history(
    store: EventStore,
    snapshots: SnapshotStore | None,
    story_id: str,
    from_version: int = 1,
    limit: int | None = None,
    *,
    must_exist: bool = False,
) -> list[EventEnvelope]:
    """Events from ``from_version`` on (at most ``limit``), read from the nearest snapshot below it.
    ``must_exist``: StoryNotFound for a story the log does not have (else an empty list)."""
    out: list[EventEnvelope] = []
    async with contextlib.aclosing(
        stream_history(store, snapshots, story_id, from_version, limit, must_exist=must_exist)
    ) as batches:
        async for batch in batches:
            out += batch
    return out


async def stream_history(
    store: EventStore,
    snapshots: SnapshotStore | None,
    story_id: str,
    from_version: int = 1,
    limit: int | None = None,
    *,
    must_exist: bool = False,
) -> AsyncGenerator[list[EventEnvelope], None]:
    """``read_history`` a batch at a time, as the log hands them over: the first events reach the
    caller before the last are read, and a long history is never held whole."""
    check_limit(limit)
    after = 0
    if snapshots is not None and from_version > 1:
        after = await snapshots.sequence_before(story_id, from_version)
    left = limit
    async with contextlib.aclosing(store.read_envelopes(story_id, after, wanted=limit)) as batches:
        async for batch in batches:
            if batch[0].version < from_version:
                batch = [envelope for envelope in batch if envelope.version >= from_version]
            if left is not None:
                batch, left = batch[:left], left - min(left, len(batch))
            if batch:
                must_exist = False
                yield batch
            if left == 0:
                break
    if must_exist and await store.last_sequence(story_id) == 0:
        raise StoryNotFound(story_id)


async def read_state_at(
    store: EventStore,
    snapshots: SnapshotStore | None,
    story_id: str,
    *,
    version: int | None = None,
    at: datetime | None = None,
) -> StoryState:
    """The story as it was after ``version``, or at time ``at`` (events stamped at or before it): the
    newest snapshot at or before that point, then the events after it. Raises StoryNotFound if the
    story did not exist yet at that point."""
    check_point(version, at)
    state, after = StoryState(story_id), 0
    if snapshots is not None:
        snapshot = await snapshots.latest(story_id, max_version=version, at=at)
        if snapshot is not None:
            state, after = snapshot.state, snapshot.last_sequence
    builder = StateBuilder(state)
    # Every event of the story has the next version: up to a version, exactly this many are needed
    # (a read by time stops at the first event stamped after the point, usually within a snapshot
    # interval or a few).
    wanted = version - state.version if version is not None else TIME_READ_BATCH
    done = wanted <= 0
    if not done:
        async with contextlib.aclosing(store.read_envelopes(story_id, after, wanted=wanted)) as batches:
            async for batch in batches:
                for envelope in batch:
                    if (version is not None and envelope.version > version) or (
                        at is not None and envelope.timestamp > at
                    ):
                        done = True
                        break
                    builder.add(envelope)
                done = done or (version is not None and builder.version >= version)
                if done:
                    break
    state = builder.state()
    if not state.created:
        raise StoryNotFound(story_id)
    return state
