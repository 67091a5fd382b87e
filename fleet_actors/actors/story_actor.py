"""The story actor: one per story, named ``story:{id}``; passivates when idle or evicted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from datetime import datetime
from typing import Any

import ray

from fleet_actors.actors.naming import REGISTRY_NAME, get_or_create, story_actor_name
from fleet_actors.application.messages import CommandRequest, CommandResult
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import StoryError, StoryNotFound
from fleet_actors.ports.event_store import EventStore
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: calls answered on their own thread so the registry can ask while a command is running
HEALTH = "health"


class StoryActor:
    """Ray shell around :class:`StoryRuntime`. Replies carry errors as values (see FleetClient)."""

    def __init__(self, story_id: str, settings: Settings, store: EventStore | None = None) -> None:
        self._story_id = story_id
        self._settings = settings
        self._store = store
        self._runtime: StoryRuntime | None = None
        self._activation = asyncio.Lock()
        self._last_used = time.monotonic()
        self._passivating = False
        self._idle_watch = asyncio.get_running_loop().create_task(self._passivate_when_idle())

    async def _ensure_runtime(self) -> StoryRuntime:
        self._last_used = time.monotonic()
        if self._runtime is not None:
            return self._runtime
        async with self._activation:
            if self._runtime is None:
                snapshots = None
                if self._store is None:
                    from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
                    from fleet_actors.archive.composite import open_event_store

                    # archive + stream when FLEET_ARCHIVE_URL is set: history past the retention horizon
                    self._store = await open_event_store(self._settings)
                    snapshots = JetStreamSnapshotStore(self._store.connection, self._settings)
                    await snapshots.ensure_stream()
                runtime = StoryRuntime(
                    self._story_id, self._store, snapshots=snapshots, snapshot_every=self._settings.snapshot_every
                )
                await runtime.load()
                self._runtime = runtime
                registry_handle(self._settings).activated.remote(self._story_id)
        return self._runtime

    async def execute(self, request: CommandRequest) -> CommandResult | StoryError:
        try:
            runtime = await self._ensure_runtime()
            return await runtime.execute(request)
        except StoryError as error:
            return error

    async def get_state(self) -> StoryState | StoryError:
        try:
            runtime = await self._ensure_runtime()
            async with runtime.lock:
                if not runtime.state.created:
                    await runtime.load()  # maybe created by another writer since
            if not runtime.state.created:
                return StoryNotFound(self._story_id)
            return runtime.state
        except StoryError as error:
            return error

    async def history(self, from_version: int = 1, limit: int | None = None) -> list[EventEnvelope] | StoryError:
        try:
            runtime = await self._ensure_runtime()
            events = await runtime.history(from_version, limit)
            if not events and not runtime.state.created:
                return StoryNotFound(self._story_id)
            return events
        except StoryError as error:
            return error

    async def rebuild_state(self) -> StoryState | StoryError:
        try:
            runtime = await self._ensure_runtime()
            state = await runtime.rebuild_state()
            return state if state.created else StoryNotFound(self._story_id)
        except StoryError as error:
            return error

    async def state_at(self, version: int | None = None, at: datetime | None = None) -> StoryState | StoryError:
        try:
            runtime = await self._ensure_runtime()
            return await runtime.state_at(version=version, at=at)
        except StoryError as error:
            return error

    @ray.method(concurrency_group=HEALTH)
    def last_used(self) -> float:
        """Seconds since the last call (the registry evicts the least recently used)."""
        return time.monotonic() - self._last_used

    async def passivate(self) -> None:
        """Finish the command in progress, release connections and exit; the name frees up."""
        if self._passivating:
            return
        self._passivating = True
        runtime = self._runtime
        if runtime is not None:
            await runtime.lock.acquire()  # held until exit: queued commands fail over to a new actor
        with contextlib.suppress(Exception):
            registry_handle(self._settings).deactivated.remote(self._story_id)
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()
        ray.actor.exit_actor()

    async def _passivate_when_idle(self) -> None:
        interval = min(5.0, self._settings.actor_idle_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_used >= self._settings.actor_idle_seconds:
                # AsyncioActorExit is how an async actor leaves; Ray finishes the exit.
                with contextlib.suppress(ray.exceptions.AsyncioActorExit):
                    await self.passivate()
                return


class StoryRegistry:
    """Counts live story actors and passivates the least recently used beyond the cap."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._live: dict[str, float] = {}
        self._evicting: set[str] = set()

    async def activated(self, story_id: str) -> None:
        self._live[story_id] = time.monotonic()
        excess = len(self._live) - len(self._evicting) - self._settings.max_live_stories
        if excess > 0:
            await self._evict(excess, keep=story_id)

    def deactivated(self, story_id: str) -> None:
        self._live.pop(story_id, None)
        self._evicting.discard(story_id)

    def live_stories(self) -> list[str]:
        return sorted(self._live)

    async def _evict(self, count: int, keep: str) -> None:
        candidates = [s for s in self._live if s != keep and s not in self._evicting]
        handles: dict[str, Any] = {}
        for story_id in candidates:
            try:
                handles[story_id] = ray.get_actor(story_actor_name(story_id), namespace=self._settings.ray_namespace)
            except ValueError:
                self._live.pop(story_id, None)  # already gone
        idle = await asyncio.gather(*(h.last_used.remote() for h in handles.values()), return_exceptions=True)
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


@functools.cache
def story_actor_class() -> Any:
    return ray.remote(concurrency_groups={HEALTH: 1}, max_restarts=0)(StoryActor)


@functools.cache
def registry_class() -> Any:
    return ray.remote(max_restarts=-1)(StoryRegistry)


def story_handle(story_id: str, settings: Settings) -> Any:
    return get_or_create(story_actor_class(), story_actor_name(story_id), settings, story_id, settings)


def registry_handle(settings: Settings) -> Any:
    return get_or_create(registry_class(), REGISTRY_NAME, settings, settings)
