"""The story actor: one per story, named ``story:{id}``; passivates when idle or evicted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import ray

from fleet_actors.actors.naming import REGISTRY_NAME, find_live, get_or_create, live_story_ids, story_actor_name
from fleet_actors.application.messages import CommandRequest, CommandResult, pack, unpack
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import StoryError, StoryNotFound
from fleet_actors.observability import logs, tracing
from fleet_actors.observability.metrics import command_outcome, metrics
from fleet_actors.observability.metrics import configure as metrics_configure
from fleet_actors.observability.metrics import set_enabled as set_metrics_enabled
from fleet_actors.policy_file import load_phase_rules
from fleet_actors.ports.event_store import EventStore
from fleet_actors.ports.snapshot_store import SnapshotStore
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: how long the registry waits for a story actor to say how long it has been idle; one that is busy
#: for longer (its call queue is full) counts as just used
IDLE_QUERY_TIMEOUT = 2.0
#: seconds before an idle actor asks again to passivate (the registry may have restarted meanwhile)
PASSIVATION_RETRY = 60.0
#: event stores (one per NATS URL and stream) the registry keeps open for its existence lookups
REGISTRY_STORES = 8
#: how long the watcher runs the loop each time: enough to read a ping and flush the answer
KEEP_ALIVE_RUN = 0.05


class StoryHost:
    """The story actor's asynchronous part: opens the stores on first use and runs the runtime."""

    def __init__(self, story_id: str, settings: Settings, store: EventStore | None = None) -> None:
        self.story_id = story_id
        self._settings = settings
        self._store = store
        self._snapshots: SnapshotStore | None = None  # with a given store (tests): none
        self._runtime: StoryRuntime | None = None

    async def runtime(self) -> StoryRuntime:
        if self._runtime is None:
            if self._store is None:
                # Both or neither: an activation that fails half-way is tried again whole by the next
                # call (it once left the actor without snapshots for the rest of its life).
                self._store, self._snapshots = await _open_stores(self._settings)
            started = time.perf_counter()
            runtime = StoryRuntime(
                self.story_id,
                self._store,
                snapshots=self._snapshots,
                snapshot_every=self._settings.snapshot_every,
                phase_rules=load_phase_rules(self._settings.scope_policy_file),
            )
            await runtime.load()
            self._runtime = runtime
            _observe_activation(time.perf_counter() - started)
            registry_handle(self._settings).activated.remote(self.story_id)
        return self._runtime

    async def execute(self, request: CommandRequest) -> CommandResult:
        started = time.perf_counter()
        error: BaseException | None = None
        result: CommandResult | None = None
        with tracing.command_span(request), logs.bind(story_id=request.story_id, command_id=request.command_id):
            try:
                result = await (await self.runtime()).execute(request)
                return result
            except BaseException as failure:
                error = failure
                raise
            finally:
                _observe_command(request, result, error, time.perf_counter() - started)

    async def get_state(self) -> StoryState:
        """Never older than the log's head at the time of the call (another writer may have appended)."""
        return (await self.live_state())[0]

    async def live_state(self) -> tuple[StoryState, int]:
        """The state as :meth:`get_state` gives it, and the log sequence it is current at."""
        fresh = self._runtime is None
        runtime = await self.runtime()
        state = runtime.state if fresh else await runtime.refresh()  # just loaded: nothing to check
        if not state.created:
            raise StoryNotFound(self.story_id)
        return state, runtime.last_sequence

    async def history(self, from_version: int, limit: int | None) -> list[EventEnvelope]:
        runtime = await self.runtime()
        events = await runtime.history(from_version, limit)
        if not events and not runtime.state.created:
            raise StoryNotFound(self.story_id)
        return events

    async def rebuild_state(self) -> StoryState:
        state = await (await self.runtime()).rebuild_state()
        if not state.created:
            raise StoryNotFound(self.story_id)
        return state

    async def state_at(self, version: int | None, at: datetime | None) -> StoryState:
        return await (await self.runtime()).state_at(version=version, at=at)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            registry_handle(self._settings).deactivated.remote(self.story_id)
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()


def _observe_activation(seconds: float) -> None:
    m = metrics()
    m.activations.inc()
    m.activation_duration.observe(seconds)


def _observe_command(
    request: CommandRequest, result: CommandResult | None, error: BaseException | None, seconds: float
) -> None:
    outcome, reason = command_outcome(error, result is not None and result.duplicate)
    command = type(request.command).__name__
    m = metrics()
    m.commands.inc(command, outcome, reason)
    m.command_duration.observe(seconds, command, outcome)


async def _open_stores(settings: Settings) -> tuple[EventStore, SnapshotStore]:
    from fleet_actors.composition import open_story_stores

    return await open_story_stores(settings)


class StoryActor:
    """Ray shell around :class:`StoryHost`. Replies are packed and carry errors as values (see FleetClient).

    A synchronous actor that drives a private asyncio loop: Ray runs a synchronous actor's calls one at
    a time on the worker's main thread, while an async actor hands every call to its event-loop thread
    and back. With one process per story and more stories than cores, that hand-over costs about a
    third of the command rate (docs/benchmarks.md). Between calls the loop rests; a watcher thread
    runs it briefly when the actor is idle (connection keep-alive) and asks the actor to passivate
    once it has been idle for ``actor_idle_seconds``.
    """

    def __init__(self, story_id: str, settings: Settings, store: EventStore | None = None) -> None:
        tracing.configure(settings)
        metrics_configure(settings)
        logs.install_record_context()
        self._host = StoryHost(story_id, settings, store)
        #: with the log sequence or not -> the last state packed, its sequence and its bytes
        self._packed: dict[bool, tuple[StoryState, int, bytes]] = {}
        self._settings = settings
        self._idle_seconds = settings.actor_idle_seconds
        #: the idle watcher's period: passivation checks and connection keep-alives
        self._tick = min(settings.actor_keep_alive_seconds, settings.actor_idle_seconds / 4)
        # Not asyncio.new_event_loop(): with uvloop installed, Ray makes it the policy, and this loop,
        # which runs only during calls and keep-alives, is tested and measured as the stdlib's.
        self._loop = asyncio.SelectorEventLoop()
        self._loop_lock = threading.Lock()
        self._last_used = time.monotonic()
        self._passivation_asked_at = -PASSIVATION_RETRY
        threading.Thread(target=self._watch_idle, name=f"idle-watch:{story_id}", daemon=True).start()

    def _reply(self, call: Callable[[], Coroutine[Any, Any, Any]]) -> bytes:
        """Run one call on the loop; the reply, a typed error included, travels packed (messages.pack):
        Ray passes bytes through untouched, and a StoryError as a value reaches the client unwrapped."""
        return pack(self._run(call))

    def _run(self, call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Run one call on the loop; its result, or the StoryError it raised."""
        self._last_used = time.monotonic()
        try:
            coroutine = call()  # unpacking the request can fail (IncompatibleRelease)
            with self._loop_lock:
                return self._loop.run_until_complete(coroutine)
        except StoryError as error:
            return error

    def _state_reply(self, with_sequence: bool) -> bytes:
        """The live state packed, once per state: packing a 10,000-event story's state took longer
        than the rest of the call, and reads of a story that has not changed get the same bytes."""
        reply = self._run(self._host.live_state)
        if isinstance(reply, StoryError):
            return pack(reply)
        state, sequence = reply
        packed = self._packed.get(with_sequence)
        if packed is None or packed[0] is not state or packed[1] != sequence:
            packed = (state, sequence, pack((state, sequence) if with_sequence else state))
            self._packed[with_sequence] = packed
        return packed[2]

    def execute(self, request: bytes) -> bytes:
        """A packed CommandRequest in; a packed CommandResult or StoryError out."""
        return self._reply(lambda: self._host.execute(unpack(request)))

    def get_state(self) -> bytes:
        return self._state_reply(with_sequence=False)

    def live_state(self) -> bytes:
        """A packed (state, log sequence it is current at), for clients that hold live states (DirectReads)."""
        return self._state_reply(with_sequence=True)

    def history(self, from_version: int = 1, limit: int | None = None) -> bytes:
        return self._reply(lambda: self._host.history(from_version, limit))

    def rebuild_state(self) -> bytes:
        return self._reply(lambda: self._host.rebuild_state())

    def state_at(self, version: int | None = None, at: datetime | None = None) -> bytes:
        return self._reply(lambda: self._host.state_at(version, at))

    def configure_observability(self, metrics_enabled: bool, traces_exporter: str) -> None:
        """Metrics and traces on or off in this actor's process from now on (benchmarks measure their cost)."""
        set_metrics_enabled(metrics_enabled)
        tracing.disable()
        tracing.configure(self._settings.replace(traces_exporter=traces_exporter))

    def last_used(self) -> float:
        """Seconds since the last call (the registry evicts the least recently used)."""
        return time.monotonic() - self._last_used

    def passivate(self, only_if_idle: bool = False) -> None:
        """Release connections and exit; the name frees up. Calls queued behind this one fail with
        RayActorError and the client re-creates the actor by name."""
        if only_if_idle and self.last_used() < self._idle_seconds:
            self._passivation_asked_at = -PASSIVATION_RETRY
            return  # used again since the watcher asked
        with self._loop_lock:
            self._loop.run_until_complete(self._host.close())
        ray.actor.exit_actor()

    def _watch_idle(self) -> None:
        # One wake-up per keep-alive period at most (FLEET_ACTOR_KEEP_ALIVE_SECONDS, 30 s by default):
        # an idle actor's own cost is then next to nothing beside Ray's per-process floor.
        while True:
            time.sleep(self._tick)
            try:
                self._idle_tick()
            except Exception:  # Ray's control plane unreachable, say: the next tick tries again
                log.warning("story %s: idle check failed; next tick tries again", self._host.story_id, exc_info=True)

    def _idle_tick(self) -> None:
        idle = self.last_used()
        if idle >= self._idle_seconds and time.monotonic() - self._passivation_asked_at >= PASSIVATION_RETRY:
            # Through the registry and the actor's queue, so it runs after any call that is
            # waiting. Not submitted by the actor itself: a call it owns that is still queued
            # when it exits keeps the worker process alive.
            self._passivation_asked_at = time.monotonic()
            registry_handle(self._settings).passivate_idle.remote(self._host.story_id)
        # Calls run the loop too; between them (at most two ticks apart) it runs here.
        if idle >= self._tick and self._loop_lock.acquire(blocking=False):
            try:
                self._loop.run_until_complete(asyncio.sleep(KEEP_ALIVE_RUN))
            finally:
                self._loop_lock.release()


class StoryRegistry:
    """Counts live story actors and passivates the least recently used beyond the cap."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Restarted by Ray after a crash, the registry would otherwise forget the actors already live
        # and let the cap be exceeded by as many: adopt them (eviction asks each how idle it is).
        now = time.monotonic()
        self._live: dict[str, float] = dict.fromkeys(live_story_ids(settings), now)
        self._evicting: set[str] = set()
        self._stores: dict[tuple[str, str], EventStore] = {}
        self._connecting = asyncio.Lock()
        self._report_live()

    async def story_exists(self, story_id: str, settings: Settings) -> bool | StoryError:
        """Whether the event log has the story: asked before activating an actor for anything but a
        creation, so that a read or a command for an unknown id costs a lookup, not a worker process.
        ``settings`` are the caller's, which its story actors get too (the log they name is the one)."""
        try:
            return await (await self._store(settings)).last_sequence(story_id) > 0
        except StoryError as error:
            return error

    async def _store(self, settings: Settings) -> EventStore:
        key = (settings.nats_url, settings.stream_name)
        store = self._stores.get(key)
        if store is not None:
            return store
        async with self._connecting:
            if key not in self._stores:
                from fleet_actors.composition import open_stream_reader

                if len(self._stores) >= REGISTRY_STORES:  # one in production; tests use many streams
                    oldest = self._stores.pop(next(iter(self._stores)))
                    with contextlib.suppress(Exception):
                        await oldest.close()
                self._stores[key] = await open_stream_reader(settings)
        return self._stores[key]

    async def activated(self, story_id: str) -> None:
        self._live[story_id] = time.monotonic()
        self._report_live()
        excess = len(self._live) - len(self._evicting) - self._settings.max_live_stories
        if excess > 0:
            await self._evict(excess, keep=story_id)

    def deactivated(self, story_id: str) -> None:
        # Counted here: the passivating actor's process exits before Ray would export its metrics.
        if self._live.pop(story_id, None) is not None:
            metrics().passivations.inc("evicted" if story_id in self._evicting else "idle")
        self._evicting.discard(story_id)
        self._report_live()

    def _report_live(self) -> None:
        m = metrics()
        m.live_stories.set(len(self._live))
        m.live_stories_cap.set(self._settings.max_live_stories)

    def passivate_idle(self, story_id: str) -> None:
        """A story actor reports itself idle: ask it to passivate unless it has been used since."""
        handle = live_story_handle(story_id, self._settings)
        if handle is not None:  # else already gone
            handle.passivate.remote(only_if_idle=True)

    def live_stories(self) -> list[str]:
        return sorted(self._live)

    async def _evict(self, count: int, keep: str) -> None:
        candidates = [s for s in self._live if s != keep and s not in self._evicting]
        handles: dict[str, Any] = {}
        for story_id in candidates:
            handle = live_story_handle(story_id, self._settings)
            if handle is None:
                self._live.pop(story_id, None)  # already gone
            else:
                handles[story_id] = handle
        idle = await asyncio.gather(*(_idle_seconds(h) for h in handles.values()), return_exceptions=True)
        ranked = []
        for story_id, seconds in zip(handles, idle, strict=True):
            if isinstance(seconds, float):
                ranked.append((seconds, story_id))
            else:
                self._live.pop(story_id, None)  # died without telling us (ray.kill, node loss)
        ranked.sort(reverse=True)
        for _, story_id in ranked[:count]:
            self._evicting.add(story_id)
            handles[story_id].passivate.remote()  # fire and forget: it reports back via deactivated()


async def _idle_seconds(handle: Any) -> float:
    try:
        return await asyncio.wait_for(handle.last_used.remote(), IDLE_QUERY_TIMEOUT)
    except TimeoutError:
        return 0.0


@functools.cache
def story_actor_class() -> Any:
    return ray.remote(max_restarts=0)(StoryActor)


@functools.cache
def registry_class() -> Any:
    # Its methods are idempotent: calls in flight when it dies are sent again to the restarted one.
    return ray.remote(max_restarts=-1, max_task_retries=-1)(StoryRegistry)


def story_handle(story_id: str, settings: Settings) -> Any:
    return get_or_create(
        story_actor_class(), story_actor_name(story_id), settings, story_id, settings, **story_actor_options(settings)
    )


def story_actor_options(settings: Settings) -> dict[str, Any]:
    """Ray options of a story actor beyond the name (see get_or_create)."""
    options: dict[str, Any] = {"enable_task_events": settings.story_task_events}
    if settings.story_actor_memory_mb:
        options["memory"] = settings.story_actor_memory_mb * 2**20
    return options


def live_story_handle(story_id: str, settings: Settings) -> Any | None:
    return find_live(story_actor_name(story_id), settings)


def registry_handle(settings: Settings) -> Any:
    return get_or_create(registry_class(), REGISTRY_NAME, settings, settings)
