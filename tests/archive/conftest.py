"""Fixtures for the archive tests: a private stream with an archive folder and a max age of seconds."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fleet_actors.adapters.archive import Archive, ArchivedEventStore
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.application.messages import CommandRequest, CommandResult
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.commands import Command
from fleet_actors.settings import Settings
from tests.integration.conftest import event_store, stream_settings  # noqa: F401 - fixtures used here too

MAX_AGE = 3.0


@pytest.fixture
def archive_settings(stream_settings: Settings, tmp_path: Path) -> Settings:  # noqa: F811
    return stream_settings.replace(archive_url=str(tmp_path / "archive"), stream_max_age=MAX_AGE)


class Fleet:
    """Runtimes over the composite store with snapshots, as story actors build them."""

    def __init__(self, settings: Settings, stream: JetStreamEventStore) -> None:
        self.settings = settings
        self.stream = stream
        self.archive = Archive(settings.archive_url, settings.stream_name)
        self.store = ArchivedEventStore(stream, self.archive, settings)
        self.snapshots = JetStreamSnapshotStore(stream.connection, settings)
        self._runtimes: dict[str, StoryRuntime] = {}
        self._ids = itertools.count()

    def runtime(self, story_id: str, *, fresh: bool = False) -> StoryRuntime:
        if fresh:
            every = self.settings.snapshot_every
            return StoryRuntime(story_id, self.store, snapshots=self.snapshots, snapshot_every=every)
        return self._runtimes.setdefault(story_id, self.runtime(story_id, fresh=True))

    async def execute(self, story_id: str, command: Command) -> CommandResult:
        request = CommandRequest(story_id, command, f"a{next(self._ids)}-{story_id}", "archivist")
        return await self.runtime(story_id).execute(request)


@pytest.fixture
async def fleet(archive_settings: Settings) -> AsyncIterator[Fleet]:
    stream = await JetStreamEventStore.connect(archive_settings)
    fleet = Fleet(archive_settings, stream)
    await fleet.snapshots.ensure_stream()
    yield fleet
    await stream.close()


Execute = Callable[[str, Command], Awaitable[CommandResult]]
