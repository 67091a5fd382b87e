"""Fixtures for tests that need a stream of their own (projectors consume whole streams)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.application.messages import CommandRequest, CommandResult
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.composition import open_projector
from fleet_actors.domain.commands import (
    AddDecision,
    Command,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.projections.policy import ProjectorPolicy
from fleet_actors.projections.runner import ProjectionRunner
from fleet_actors.settings import Settings

#: fast redelivery and parking, so failure tests finish in seconds
TEST_POLICY = ProjectorPolicy(batch_size=200, fetch_timeout=0.2, max_deliver=2, ack_wait=2.0, backoff_max=0.5)


@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    """The session's servers with a stream and subject prefix of this test's own."""
    tag = uuid.uuid4().hex[:10]
    return settings.replace(stream_name=f"T{tag.upper()}", subject_prefix=f"t{tag}.events")


@pytest.fixture
async def event_store(stream_settings: Settings) -> AsyncIterator[JetStreamEventStore]:
    store = await JetStreamEventStore.connect(stream_settings)
    yield store
    await store.close()


Execute = Callable[[str, Command], Awaitable[CommandResult]]


@pytest.fixture
def execute(event_store: JetStreamEventStore) -> Execute:
    """Run commands through the real runtime and store, without Ray."""
    runtimes: dict[str, StoryRuntime] = {}
    counter = itertools.count()

    async def run(story_id: str, command: Command) -> CommandResult:
        runtime = runtimes.setdefault(story_id, StoryRuntime(story_id, event_store))
        return await runtime.execute(CommandRequest(story_id, command, f"c{next(counter)}", "tester"))

    return run


async def write_story(execute: Execute, story_id: str, extra_updates: int = 0) -> int:
    """A story touching every event type and graph shape; returns its version."""
    steps: list[Command] = [
        CreateStory("Checkout flow", "pay with cards"),
        CreateSubtask("T1", "Form", "DEV"),
        CreateSubtask("T2", "API", "DEV", dependencies=("T1",)),
        AddDecision("Use Stripe", "PCI scope", decision_id="D1"),
        AddDecision("Use Adyen", "fees", decision_id="D2"),
        RelateDecisions("D2", "D1", "SUPERSEDES"),
        RecordImpact("D2", "T2"),
        UpdateSubtask("T1", "IN_PROGRESS"),
        TransitionPhase("BUILD"),
        RecordMilestone("KICKOFF", "started", milestone_id="M1"),
    ]
    result = None
    for command in steps:
        result = await execute(story_id, command)
    for i in range(extra_updates):
        result = await execute(story_id, UpdateSubtask("T1", "BLOCKED" if i % 2 == 0 else "IN_PROGRESS"))
    assert result is not None
    return result.version


class RunningProjectors:
    def __init__(self, settings: Settings, count: int, policy: ProjectorPolicy = TEST_POLICY) -> None:
        self.settings, self.count, self.policy = settings, count, policy
        self.projectors: list[ProjectionRunner] = []
        self._stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> RunningProjectors:
        self._stop = asyncio.Event()
        self.projectors = [await open_projector(self.settings, i, self.count, self.policy) for i in range(self.count)]
        self.tasks = [asyncio.create_task(p.run(self._stop)) for p in self.projectors]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for projector in self.projectors:
            await projector.close()

    @property
    def graph(self):
        return self.projectors[0].projection.graph

    @property
    def cache(self):
        return self.projectors[0].projection.documents

    @property
    def dead_letters(self):
        return self.projectors[0].dead_letters


@pytest.fixture
async def projectors(stream_settings: Settings) -> AsyncIterator[RunningProjectors]:
    running = await RunningProjectors(stream_settings, 2).start()
    yield running
    await running.stop()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)
