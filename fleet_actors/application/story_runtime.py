"""One story's command loop: load, decide, append, evolve. The Ray actor is a thin shell around it."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from itertools import islice

from fleet_actors.application.ids import new_id
from fleet_actors.application.messages import CommandRequest, CommandResult
from fleet_actors.application.story_reads import read_history, read_state_at
from fleet_actors.domain import rules
from fleet_actors.domain.events import DecisionAdded, EventEnvelope
from fleet_actors.domain.phases import DEFAULT_PHASE_RULES, PhaseRules
from fleet_actors.domain.redaction import redact_value
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import Accepted, DecideContext, StateBuilder, decide, evolve, ids_needed
from fleet_actors.errors import (
    AppendOutcomeUnknown,
    BackendUnavailable,
    ConcurrencyConflict,
    EventDecodeError,
    InvalidCommand,
    StoryError,
)
from fleet_actors.ports.event_store import EventStore, StoredEvent
from fleet_actors.ports.snapshot_store import Snapshot, SnapshotStore

#: how many recent command ids a story remembers for idempotent retries, across crashes and passivation
COMMAND_ID_WINDOW = 10_000
#: how many of them a snapshot carries with their results. The older ones of the window are read back
#: from the log (the events carry their command ids) from the snapshot's ``window_start_sequence``,
#: once, by the first command after activation whose id is not among those carried: a whole window in
#: every snapshot would be ~0.5 MB, written every ``snapshot_every`` events, while the read-back costs
#: one pass over the window's events, and only for a story that has had more than this many commands
SNAPSHOT_COMMANDS = 1_000
#: a snapshot is taken every ``snapshot_every`` events, or, for a story whose state holds more than
#: this many values (subtasks, decisions, relations...) per ``snapshot_every`` events, every
#: values / this: what a snapshot writes per event then stays bounded as the story grows (its values
#: are encoded once each, see SnapshotEncoder; the snapshot is still written whole), at the price of
#: replaying a longer tail on activation
SNAPSHOT_VALUES_PER_EVENT = 20

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


class StoryRuntime:
    """Holds one story's state and serialises its commands (one at a time, under a lock)."""

    def __init__(
        self,
        story_id: str,
        store: EventStore,
        *,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_id,
        snapshots: SnapshotStore | None = None,
        snapshot_every: int = 100,
        phase_rules: PhaseRules = DEFAULT_PHASE_RULES,
    ) -> None:
        self._phase_rules = phase_rules
        self.story_id = rules.check_id(story_id, "story_id")
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self._lock = asyncio.Lock()
        self.state = StoryState(story_id)
        self.last_sequence = 0
        self._loaded = False
        self._results: OrderedDict[str, CommandResult] = OrderedDict()
        #: command id -> log sequence at or below its first event (0: from the story's start); where the
        #: window starts once that command is the oldest one remembered
        self._first_sequence: dict[str, int] = {}
        #: (after, up to) log sequences of the window's part that the snapshot did not carry, until read back
        self._recall: tuple[int, int] | None = None
        self._snapshots = snapshots
        self._snapshot_every = snapshot_every
        self._snapshot_version = 0
        #: events folded by the last load (for measurements and tests)
        self.replayed_on_load = 0

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    async def load(self, *, use_snapshot: bool = True) -> None:
        """Rebuild the state: the newest readable snapshot, then the events after it."""
        self._reset()
        snapshot = await self._snapshots.latest(self.story_id) if (use_snapshot and self._snapshots) else None
        if snapshot is not None:
            self.state, self.last_sequence = snapshot.state, snapshot.last_sequence
            self._snapshot_version = snapshot.version
            for result in snapshot.recent_commands:
                self._results[result.command_id] = result
                self._first_sequence[result.command_id] = 0  # a lower bound: the story's start
            if snapshot.window_start_sequence or len(snapshot.recent_commands) >= SNAPSHOT_COMMANDS:
                # Only the newest part of the window is carried (a snapshot from before window starts
                # were kept: from the story's first event). The rest stays in the log until a command
                # needs it (_recall_window): reads and retries of recent command ids do not.
                self._recall = (max(snapshot.window_start_sequence - 1, 0), snapshot.last_sequence)
        before = self.state.version
        try:
            await self._catch_up()
        except EventDecodeError:
            if snapshot is None:
                raise
            # The snapshot does not fit the log (e.g. restored from elsewhere): trust the log alone.
            log.warning("story %s: snapshot v%s does not fit the log; replaying", self.story_id, snapshot.version)
            self._reset()
            before = 0
            await self._catch_up()
        self.replayed_on_load = self.state.version - before
        self._loaded = True

    async def refresh(self) -> StoryState:
        """The state, caught up with the log as it is now: another writer (the importer, a second
        actor during a fail-over) may have appended since. One head lookup when nothing changed."""
        async with self._lock:
            if not self._loaded:
                await self.load()
            elif await self._store.last_sequence(self.story_id) != self.last_sequence:
                await self._catch_up()
            return self.state

    def _reset(self) -> None:
        self.state = StoryState(self.story_id)
        self.last_sequence = 0
        self._snapshot_version = 0
        self._results.clear()
        self._first_sequence.clear()
        self._recall = None

    async def _recall_window(self) -> None:
        """Read back the command ids of the window that the snapshot this story loaded did not carry.
        Runs under the lock; if the read fails, the next command tries again."""
        assert self._recall is not None
        after, up_to = self._recall
        newer, newer_first = self._results, self._first_sequence
        self._results, self._first_sequence = OrderedDict(), {}
        try:
            async for stored in self._store.read(self.story_id, after):
                if stored.sequence > up_to:
                    break
                self._remember(stored.envelope, stored.sequence)
        except BaseException:
            self._results, self._first_sequence = newer, newer_first
            raise
        for command_id, result in newer.items():  # the carried ones again (now with their sequences), then later
            if command_id not in self._results:
                self._results[command_id] = result
                self._first_sequence[command_id] = newer_first[command_id]
        while len(self._results) > COMMAND_ID_WINDOW:
            oldest, _ = self._results.popitem(last=False)
            self._first_sequence.pop(oldest, None)
        self._recall = None

    async def rebuild_state(self) -> StoryState:
        """Replay every event, ignoring snapshots, and take a fresh snapshot (operators' repair tool)."""
        async with self._lock:
            await self.load(use_snapshot=False)
            await self._take_snapshot()
            return self.state

    async def _maybe_snapshot(self) -> None:
        if self._snapshots is not None and self.state.version - self._snapshot_version >= self._snapshot_interval():
            await self._take_snapshot()

    def _snapshot_interval(self) -> int:
        state = self.state
        values = len(state.subtasks) + len(state.decisions) + len(state.relations) + len(state.impacts)
        values += len(state.milestones) + len(state.phase_history)
        return max(self._snapshot_every, values // SNAPSHOT_VALUES_PER_EVENT)

    async def _take_snapshot(self) -> None:
        if self._snapshots is None or not self.state.created:
            return
        recent = tuple(islice(reversed(self._results.values()), SNAPSHOT_COMMANDS))[::-1]
        window_start = 0
        if self._recall is not None:  # not read back yet: the window still starts where it did
            window_start = self._recall[0] + 1
        elif len(self._results) > len(recent):
            window_start = max(self._first_sequence[next(iter(self._results))], 1)
        try:
            await self._snapshots.save(Snapshot(self.state, self.last_sequence, recent, window_start))
            self._snapshot_version = self.state.version
        except StoryError as error:  # a missed snapshot costs replay time, never a command
            log.warning("story %s: snapshot v%s not saved: %s", self.story_id, self.state.version, error)

    async def _catch_up(self) -> None:
        """Fold the events appended since ``last_sequence`` (by us or by another writer)."""
        builder = StateBuilder(self.state)
        try:
            async for stored in self._store.read(self.story_id, self.last_sequence):
                self._check_follows(stored.envelope, builder.version)
                builder.add(stored.envelope)
                self.last_sequence = stored.sequence
                self._remember(stored.envelope, stored.sequence)
        finally:
            self.state = builder.state()

    def _check_follows(self, envelope: EventEnvelope, version: int) -> None:
        if envelope.version != version + 1:
            raise EventDecodeError(
                f"story {self.story_id!r}: event {envelope.event_id} has version {envelope.version}, "
                f"expected {version + 1}; the log is inconsistent"
            )

    def _apply(self, stored: StoredEvent) -> None:
        envelope = stored.envelope
        self._check_follows(envelope, self.state.version)
        self.state = evolve(self.state, envelope)
        self._remember(envelope, stored.sequence)
        self.last_sequence = stored.sequence

    def _remember(self, envelope: EventEnvelope, sequence: int) -> None:
        """Record the event's part in its command's result; ``sequence`` is its log sequence or a lower bound."""
        if not envelope.command_id:
            return
        prior = self._results.get(envelope.command_id)
        decision_id = envelope.payload.decision_id if isinstance(envelope.payload, DecisionAdded) else None
        if prior is None:
            self._results[envelope.command_id] = CommandResult(
                self.story_id, envelope.version, (envelope.event_id,), envelope.command_id, decision_id
            )
            self._first_sequence[envelope.command_id] = sequence
            if len(self._results) > COMMAND_ID_WINDOW:
                oldest, _ = self._results.popitem(last=False)
                self._first_sequence.pop(oldest, None)
        else:
            self._results[envelope.command_id] = replace(
                prior,
                version=envelope.version,
                event_ids=(*prior.event_ids, envelope.event_id),
                decision_id=prior.decision_id or decision_id,
            )

    async def execute(self, request: CommandRequest) -> CommandResult:
        """Decide and append one command. Raises the typed StoryError on rejection."""
        if request.story_id != self.story_id:
            raise InvalidCommand(f"request for story {request.story_id!r} sent to {self.story_id!r}")
        rules.check_id(request.command_id, "command_id")
        rules.check_actor(request.actor)
        rules.check_expected_version(request.expected_version)
        async with self._lock:
            if not self._loaded:
                await self.load()
            if self._recall is not None and request.command_id not in self._results:
                await self._recall_window()
            for attempt in range(2):
                prior = self._results.get(request.command_id)
                if prior is not None:
                    return replace(prior, duplicate=True)
                if request.expected_version is not None and request.expected_version != self.state.version:
                    await self._catch_up()
                    if request.expected_version != self.state.version:
                        raise ConcurrencyConflict(
                            f"story {self.story_id!r} is at version {self.state.version}, "
                            f"not the expected {request.expected_version}",
                            expected=request.expected_version,
                            actual=self.state.version,
                        )
                fresh_ids = tuple(self._new_id() for _ in range(ids_needed(request.command)))
                decision = decide(self.state, request.command, DecideContext(fresh_ids, self._phase_rules))
                if not isinstance(decision, Accepted):
                    # Rejections are rare: before reporting one, make sure it was not decided on
                    # state that another writer has moved on from.
                    if attempt == 0 and await self._store.last_sequence(self.story_id) != self.last_sequence:
                        await self._catch_up()
                        continue
                    raise decision.error
                now = self._clock()
                envelopes = [
                    EventEnvelope(
                        event_id=self._new_id(),
                        story_id=self.story_id,
                        version=self.state.version + offset,
                        timestamp=now,
                        payload=event,
                        command_id=request.command_id,
                        actor=request.actor,
                        redacted=tuple(redacted),
                    )
                    for offset, (event, redacted) in enumerate(
                        (redact_value(e, request.redaction) if request.redaction else (e, []) for e in decision.events),
                        start=1,
                    )
                ]
                try:
                    appended = await self._store.append(self.story_id, self.last_sequence, envelopes)
                except ConcurrencyConflict:
                    # Another writer got there first: see what it did and decide once more.
                    await self._catch_up()
                    if attempt == 0:
                        continue
                    raise
                except (AppendOutcomeUnknown, BackendUnavailable):
                    # The append may or may not have landed: forget the state, reload next time.
                    self._loaded = False
                    raise
                first_sequence = self.last_sequence + 1  # a batch's events are stored together, after the head
                for envelope in envelopes[:-1]:
                    self.state = evolve(self.state, envelope)
                    self._remember(envelope, first_sequence)
                self._apply(StoredEvent(envelopes[-1], appended.last_sequence))
                await self._maybe_snapshot()
                return self._results[request.command_id]
            raise AssertionError("unreachable")

    async def state_at(self, *, version: int | None = None, at: datetime | None = None) -> StoryState:
        """The story as it was after ``version``, or at time ``at`` (events stamped at or before it).

        Raises StoryNotFound if the story did not exist yet at that point.
        """
        return await read_state_at(self._store, self._snapshots, self.story_id, version=version, at=at)

    async def history(self, from_version: int = 1, limit: int | None = None) -> list[EventEnvelope]:
        """Events from ``from_version`` on (at most ``limit``), read from the nearest snapshot below it."""
        return await read_history(self._store, self._snapshots, self.story_id, from_version, limit)
