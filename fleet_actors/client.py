"""The Python API: commands and queries to story actors through Ray (local, cluster or ray://).

``FleetClient`` blocks; ``client.aio`` (an :class:`AsyncFleetClient`) has the same methods as
coroutines for asyncio code. Every command returns a :class:`CommandResult` with the story's new
version, or raises a typed :class:`~fleet_actors.errors.StoryError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

import ray
import ray.exceptions

from fleet_actors.actors.read_model_actor import read_models_handle
from fleet_actors.actors.spare_workers import SPARES, ray_system_config
from fleet_actors.actors.story_actor import live_story_handle, registry_handle, story_handle
from fleet_actors.application.ids import new_id
from fleet_actors.application.messages import CommandRequest, CommandResult, pack, unpack
from fleet_actors.application.read_models import ContextView
from fleet_actors.application.story_reads import check_point
from fleet_actors.direct_reads import DirectReads, LoopThread
from fleet_actors.domain import rules
from fleet_actors.domain.alternatives import alternatives_from
from fleet_actors.domain.commands import (
    AddDecision,
    ApplyChanges,
    Command,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordSummary,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.events import Alternative, EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import may_create_story
from fleet_actors.domain.validation import check_request
from fleet_actors.errors import BackendUnavailable, InvalidCommand, StoryError, StoryNotFound
from fleet_actors.observability import tracing
from fleet_actors.observability.logs import ray_logging_config
from fleet_actors.observability.metrics import command_outcome, metrics
from fleet_actors.policy_file import phase_rules
from fleet_actors.settings import Settings

R = TypeVar("R")

#: an actor that passivated or died is re-created by name; this bounds how long we keep trying
ACTOR_RETRIES = 10
_ACTOR_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
_HANDLE_CACHE = 4096
#: not a valid story id, so it cannot collide with one in the shared handle cache
_READ_MODELS_KEY = ":read-models"
_REGISTRY_KEY = ":registry"


def connect_ray(settings: Settings, address: str | None = None, *, start_local: bool = True) -> None:
    """Join the configured Ray cluster, or start a local runtime when none is configured (unless
    ``start_local`` is False: operator tools work on a cluster and never start one of their own)."""
    if ray.is_initialized():
        return
    target = address or settings.ray_address or "local"
    if target == "local" and not start_local:
        raise BackendUnavailable("no Ray cluster is configured (RAY_ADDRESS or FLEET_RAY_ADDRESS)")
    _probe_ray(target, settings.nats_timeout)
    options: dict[str, Any] = {
        "namespace": settings.ray_namespace,
        "logging_level": "ERROR",
        "log_to_driver": False,
    }
    if target == "local":
        options["include_dashboard"] = False
        options["_system_config"] = ray_system_config()
    if (logging_config := ray_logging_config(settings.log_format)) is not None:
        options["logging_config"] = logging_config  # JSON lines from the actors this driver creates
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=target, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise BackendUnavailable(f"cannot connect to Ray at {target}: {error}") from None


def _probe_ray(target: str, timeout: float) -> None:
    """Fail in ``timeout`` seconds when a cluster's host:port does not accept connections (ray.init
    would retry for about a minute)."""
    host_port = target.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "connection refused" if isinstance(error, ConnectionRefusedError) else str(error) or "no answer"
        raise BackendUnavailable(f"cannot reach Ray at {target}: {reason}") from None


class _StoryApi(Generic[R]):
    """Builds requests once for both the blocking and the asyncio client."""

    def __init__(self, settings: Settings, handles: OrderedDict[str, Any]) -> None:
        self.settings = settings
        self._handles = handles

    # The transport: blocking or awaitable. ``may_create``: the call can create the story.
    def _call(self, story_id: str, method: str, *args: Any, may_create: bool = False) -> R:
        raise NotImplementedError

    def _query(self, method: str, *args: Any) -> R:
        """A read-model query (not routed to the story actor)."""
        raise NotImplementedError

    def _known_handle(self, story_id: str) -> Any | None:
        """The story's actor if this client knows it or it is live; None means it needs activating."""
        handle = self._handles.get(story_id)
        if handle is not None:
            self._handles.move_to_end(story_id)
            return handle
        handle = live_story_handle(story_id, self.settings)
        if handle is not None:
            self._remember(story_id, handle)
        return handle

    def _activate(self, story_id: str, exists: bool) -> Any:
        """Activate the story's actor, unless the log has no such story (``exists``, from the registry):
        a read or a command for an unknown id must not cost a worker process."""
        if not exists:
            raise StoryNotFound(story_id)
        handle = story_handle(story_id, self.settings)
        self._remember(story_id, handle)
        return handle

    def _activated(self) -> None:
        """A story actor activated and answered: ask for the next activation's worker (after the
        answer, not to compete with this activation for the CPU)."""
        SPARES.activated(self.settings.spare_workers)

    def _remember(self, story_id: str, handle: Any) -> None:
        self._handles[story_id] = handle
        if len(self._handles) > _HANDLE_CACHE:
            self._handles.popitem(last=False)

    def _registry(self) -> Any:
        handle = self._handles.get(_REGISTRY_KEY)
        if handle is None:
            handle = self._handles[_REGISTRY_KEY] = registry_handle(self.settings)
        return handle

    def _forget(self, story_id: str) -> None:
        self._handles.pop(story_id, None)

    def _read_models(self) -> Any:
        """The read-model actor, looked up once (Ray restarts it in place, so the handle stays good)."""
        handle = self._handles.get(_READ_MODELS_KEY)
        if handle is None:
            handle = self._handles[_READ_MODELS_KEY] = read_models_handle(self.settings)
        return handle

    def submit(
        self,
        story_id: str,
        command: Command,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
        redaction: tuple[tuple[str, str], ...] = (),
    ) -> R:
        """Send any command. The command id defaults to a fresh one, so transport retries are safe; one
        that is given must be a valid id (an empty one is refused: it would never match a retry).

        ``redaction``: secret patterns (domain/redaction.py) the story redacts from the events
        before appending them; the gateway passes them when ``redact_on_append`` is on."""
        rules.check_id(story_id, "story_id")
        # Everything that needs no story state is judged here, before a story actor is activated:
        # a malformed command must not cost a worker process (nor count against the live cap).
        check_request(command, command_id, actor, expected_version, phase_rules(self.settings.scope_policy_file))
        request = CommandRequest(
            story_id, command, new_id() if command_id is None else command_id, actor, expected_version,
            tuple(redaction),
        )  # fmt: skip
        return self._command(request)

    def _command(self, request: CommandRequest) -> R:
        """Send a command to its story actor (timed and traced by the subclasses)."""
        raise NotImplementedError

    def create_story(
        self,
        story_id: str,
        title: str,
        description: str = "",
        initial_phase: str = "DESIGN",
        actor: str = "",
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> R:
        return self.submit(
            story_id,
            CreateStory(title, description, initial_phase),
            expected_version=expected_version,
            command_id=command_id,
            actor=actor,
        )

    def create_subtask(
        self,
        story_id: str,
        subtask_id: str,
        title: str,
        role: str,
        description: str = "",
        dependencies: Iterable[str] = (),
        priority: int = 3,
        estimated_hours: int = 0,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = CreateSubtask(
            subtask_id, title, role, description, _as_tuple(dependencies), priority, estimated_hours
        )
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def update_subtask(
        self,
        story_id: str,
        subtask_id: str,
        status: str,
        note: str = "",
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = UpdateSubtask(subtask_id, status, note)
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def add_decision(
        self,
        story_id: str,
        title: str,
        rationale: str,
        decision_type: str = "ARCHITECTURE",
        decision_id: str | None = None,
        alternatives: str | Iterable[Alternative | str | tuple[str, str]] = "",
        decided_by: str = "",
        metadata: Mapping[str, str] | None = None,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = AddDecision(
            title,
            rationale,
            decision_type,
            decision_id,
            alternatives_from(alternatives),
            decided_by,
            dict(metadata) if isinstance(metadata, Mapping) else ({} if metadata is None else metadata),
        )
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def relate_decisions(
        self,
        story_id: str,
        src_id: str,
        dst_id: str,
        relation_type: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = RelateDecisions(src_id, dst_id, relation_type)
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def record_impact(
        self,
        story_id: str,
        decision_id: str,
        subtask_id: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = RecordImpact(decision_id, subtask_id)
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def transition_phase(
        self,
        story_id: str,
        to_phase: str,
        rationale: str = "",
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = TransitionPhase(to_phase, rationale)
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def record_milestone(
        self,
        story_id: str,
        kind: str,
        description: str = "",
        milestone_id: str | None = None,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        command = RecordMilestone(kind, description, milestone_id)
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def record_summary(
        self,
        story_id: str,
        summary: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        return self.submit(
            story_id, RecordSummary(summary), expected_version=expected_version, command_id=command_id, actor=actor
        )

    def apply_changes(
        self,
        story_id: str,
        commands: Iterable[Command],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        actor: str = "",
    ) -> R:
        """Several commands as one atomic append: all are applied or none."""
        command = ApplyChanges(_as_tuple(commands))
        return self.submit(story_id, command, expected_version=expected_version, command_id=command_id, actor=actor)

    def get_story(self, story_id: str) -> R:
        """The story's current state (always up to date with the event log): the story actor's, which
        this client holds and keeps current with one look at the log's head per call (DirectReads)."""
        rules.check_id(story_id, "story_id")
        if self.settings.direct_reads:
            return self._live_state(story_id)
        return self._call(story_id, "get_state")

    def _live_state(self, story_id: str) -> R:
        raise NotImplementedError

    def history(self, story_id: str, from_version: int = 1, limit: int | None = None) -> R:
        """The story's decoded events in order, from ``from_version`` (at most ``limit`` of them), read
        from the log in this process (the story actor reads them with FLEET_DIRECT_READS=0)."""
        rules.check_id(story_id, "story_id")
        if self.settings.direct_reads:
            return self._direct(lambda reads: reads.history(story_id, from_version, limit))
        return self._call(story_id, "history", from_version, limit)

    def _direct(self, read: Callable[[DirectReads], Coroutine[Any, Any, Any]]) -> R:
        """Run a read on this client's own connection to the log."""
        raise NotImplementedError

    def rebuild_state(self, story_id: str) -> R:
        """Replay the story's whole log in its actor (ignoring snapshots) and take a fresh snapshot."""
        rules.check_id(story_id, "story_id")
        return self._call(story_id, "rebuild_state")

    def get_story_at(self, story_id: str, at: datetime | int) -> R:
        """The story as it was at a time (timezone-aware datetime) or right after a version (int): the
        newest snapshot before that point and the events after it, read in this process."""
        rules.check_id(story_id, "story_id")
        if isinstance(at, datetime):
            version, when = None, at
        elif isinstance(at, int) and not isinstance(at, bool):
            version, when = at, None
        else:
            raise InvalidCommand("at must be a datetime or a version number", field="at")
        if self.settings.direct_reads:
            check_point(version, when)  # before any connection, as the actor did
            return self._direct(lambda reads: reads.state_at(story_id, version, when))
        return self._call(story_id, "state_at", version, when)

    def get_context(self, story_id: str) -> R:
        """The story from the read models (a :class:`ContextView`), which may lag behind the log."""
        rules.check_id(story_id, "story_id")
        return self._query("get_context", story_id)

    def wait_for_projection(self, story_id: str, version: int, timeout: float = 10.0) -> R:
        """Wait until both read models include ``version``; raises ProjectionTimeout."""
        rules.check_id(story_id, "story_id")
        return self._query("wait_for_projection", story_id, version, timeout)


def _as_tuple(value: Any) -> Any:
    """An iterable as a tuple; a string, or a value that is not iterable, as it is: validation refuses
    it naming the field (``tuple("abc")`` would have been three one-letter ids)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return value
    return tuple(value)


def _unwrap(value: Any) -> Any:
    if isinstance(value, StoryError):
        raise value
    return value


class FleetClient(_StoryApi[Any]):
    """Blocking client. ``FleetClient.connect()`` joins Ray (``RAY_ADDRESS``, ``ray://`` or local)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, OrderedDict())
        tracing.configure(settings)
        self.aio = AsyncFleetClient(settings, self._handles)
        self._reads = DirectReads(settings)
        self._reads_loop = LoopThread()

    @classmethod
    def connect(
        cls, address: str | None = None, *, settings: Settings | None = None, start_local: bool = True
    ) -> FleetClient:
        settings = settings or Settings.from_env()
        connect_ray(settings, address, start_local=start_local)
        return cls(settings)

    def _call(self, story_id: str, method: str, *args: Any, may_create: bool = False) -> Any:
        for attempt in range(ACTOR_RETRIES):
            try:
                handle = self._known_handle(story_id)
                activating = handle is None
                if activating:
                    exists = may_create or _unwrap(
                        ray.get(self._registry().story_exists.remote(story_id, self.settings))
                    )
                    handle = self._activate(story_id, exists)
                reply = ray.get(getattr(handle, method).remote(*args))
                if activating:
                    self._activated()
                return _unwrap(unpack(reply))
            except _ACTOR_GONE:  # the story actor (or the registry, restarting) is gone
                # Passivated or died: the next call re-activates it by name from the event log.
                self._forget(story_id)
                time.sleep(_backoff(attempt))
        raise BackendUnavailable(f"the actor of story {story_id!r} kept dying; see the Ray logs")

    def _command(self, request: CommandRequest) -> Any:
        with _observed_command(request) as sent:
            request = sent.request
            sent.result = self._call(
                request.story_id, "execute", pack(request), may_create=may_create_story(request.command)
            )
            return sent.result

    def _query(self, method: str, *args: Any) -> Any:
        return _unwrap(ray.get(getattr(self._read_models(), method).remote(*args)))

    def _direct(self, read: Callable[[DirectReads], Coroutine[Any, Any, Any]]) -> Any:
        return self._reads_loop.run(read(self._reads))

    def _live_state(self, story_id: str) -> Any:
        state = self._direct(lambda reads: reads.live_state(story_id))
        if state is None:
            state, sequence = self._call(story_id, "live_state")
            self._reads.remember(story_id, state, sequence)
        return state

    def close(self) -> None:
        """Release the connection to the log (this client's and its ``aio`` twin's in this thread's loop)."""
        self._handles.clear()
        with contextlib.suppress(Exception):
            self._reads_loop.run(self._reads.close())
        self._reads_loop.stop()
        self.aio.close_now()


class AsyncFleetClient(_StoryApi[Awaitable[Any]]):
    """The same API as :class:`FleetClient`, as coroutines; ``await close()`` releases its connection
    to the log (opened by the first direct read, on the event loop that made it)."""

    def __init__(self, settings: Settings, handles: OrderedDict[str, Any] | None = None) -> None:
        super().__init__(settings, OrderedDict() if handles is None else handles)
        self._reads: DirectReads | None = None
        self._reads_loop: asyncio.AbstractEventLoop | None = None

    def _direct_reads(self) -> DirectReads:
        """This event loop's: a connection belongs to the loop it was opened on, and a caller of
        ``asyncio.run`` gets a new loop each time (the old loop's connection went with it)."""
        loop = asyncio.get_running_loop()
        if self._reads is None or self._reads_loop is not loop:
            self._reads, self._reads_loop = DirectReads(self.settings), loop
        return self._reads

    async def stream_history(
        self, story_id: str, from_version: int = 1, limit: int | None = None
    ) -> AsyncGenerator[list[EventEnvelope], None]:
        """``history`` a batch at a time (a few hundred events each), as they are read from the log in
        this process: the first events arrive before the last are read. ``async for batch in ...``."""
        rules.check_id(story_id, "story_id")
        if not self.settings.direct_reads:
            yield await self._call_async(story_id, "history", from_version, limit)
            return
        async with contextlib.aclosing(self._direct_reads().stream_history(story_id, from_version, limit)) as batches:
            async for batch in batches:
                yield batch

    async def open_reads(self) -> None:
        """Open the connection to the log for direct reads now, on this event loop, rather than in the
        first read (which would pay for connecting). No-op with direct reads off."""
        if self.settings.direct_reads:
            await self._direct_reads().stores()

    def _direct(self, read: Callable[[DirectReads], Coroutine[Any, Any, Any]]) -> Awaitable[Any]:
        async def run() -> Any:
            return await read(self._direct_reads())

        return run()

    def _live_state(self, story_id: str) -> Awaitable[Any]:
        return self._live_state_async(story_id)

    async def _live_state_async(self, story_id: str) -> Any:
        reads = self._direct_reads()
        state = await reads.live_state(story_id)
        if state is None:
            state, sequence = await self._call_async(story_id, "live_state")
            reads.remember(story_id, state, sequence)
        return state

    async def close(self) -> None:
        reads, self._reads, self._reads_loop = self._reads, None, None
        if reads is not None:
            await reads.close()

    def close_now(self) -> None:
        """Close from outside an event loop (FleetClient.close): only if this client's loop is not running."""
        loop = self._reads_loop
        if self._reads is not None and loop is not None and not loop.is_closed() and not loop.is_running():
            with contextlib.suppress(Exception):
                loop.run_until_complete(self.close())
        self._reads = self._reads_loop = None

    def _call(self, story_id: str, method: str, *args: Any, may_create: bool = False) -> Awaitable[Any]:
        return self._call_async(story_id, method, *args, may_create=may_create)

    def _query(self, method: str, *args: Any) -> Awaitable[Any]:
        return self._query_async(method, *args)

    def _command(self, request: CommandRequest) -> Awaitable[Any]:
        return self._command_async(request)

    async def _command_async(self, request: CommandRequest) -> Any:
        with _observed_command(request) as sent:
            request = sent.request
            sent.result = await self._call_async(
                request.story_id, "execute", pack(request), may_create=may_create_story(request.command)
            )
            return sent.result

    async def _query_async(self, method: str, *args: Any) -> Any:
        return _unwrap(await getattr(self._read_models(), method).remote(*args))

    async def _call_async(self, story_id: str, method: str, *args: Any, may_create: bool = False) -> Any:
        for attempt in range(ACTOR_RETRIES):
            try:
                handle = self._known_handle(story_id)
                activating = handle is None
                if activating:
                    exists = may_create or _unwrap(await self._registry().story_exists.remote(story_id, self.settings))
                    handle = self._activate(story_id, exists)
                reply = await getattr(handle, method).remote(*args)
                if activating:
                    self._activated()
                return _unwrap(unpack(reply))
            except _ACTOR_GONE:  # the story actor (or the registry, restarting) is gone
                self._forget(story_id)
                await asyncio.sleep(_backoff(attempt))
        raise BackendUnavailable(f"the actor of story {story_id!r} kept dying; see the Ray logs")


@dataclasses.dataclass
class _SentCommand:
    request: CommandRequest
    result: Any = None


@contextlib.contextmanager
def _observed_command(request: CommandRequest) -> Iterator[_SentCommand]:
    """One command's client span and latency metric, the same for the blocking and asyncio clients:
    the body sends ``sent.request`` (carrying the trace context) and sets ``sent.result``."""
    started, error = time.perf_counter(), None
    with tracing.client_span(request.story_id, type(request.command).__name__):
        sent = _SentCommand(_traced(request))
        try:
            yield sent
        except BaseException as failure:
            error = failure
            raise
        finally:
            _observe_client(sent.request, sent.result, error, started)


def _traced(request: CommandRequest) -> CommandRequest:
    """The request with the current trace context (unchanged with tracing off)."""
    trace = tracing.inject()
    return request if trace is None else dataclasses.replace(request, trace=trace)


def _observe_client(request: CommandRequest, result: Any, error: BaseException | None, started: float) -> None:
    outcome, _ = command_outcome(error, isinstance(result, CommandResult) and result.duplicate)
    metrics().client_command_duration.observe(time.perf_counter() - started, type(request.command).__name__, outcome)


def _backoff(attempt: int) -> float:
    """No wait before the first retry: a cached handle whose actor passivated is the common case, and
    the retry re-activates the story at once; then 0.1 s doubling up to 1 s."""
    return 0.0 if attempt == 0 else min(0.05 * 2**attempt, 1.0)


__all__ = ["AsyncFleetClient", "CommandResult", "ContextView", "EventEnvelope", "FleetClient", "StoryState"]
