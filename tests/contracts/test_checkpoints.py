"""The checkpoint store of user projections: the fake in milliseconds, Valkey on the session's stack."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fleet_actors.adapters.memory import InMemoryProjectionCheckpoints
from fleet_actors.adapters.valkey import ValkeyProjectionCheckpoints
from fleet_actors.settings import Settings
from tests.contracts.checkpoint_contract import ProjectionCheckpointsContract


class TestInMemoryCheckpoints(ProjectionCheckpointsContract):
    @pytest.fixture
    def checkpoints(self) -> InMemoryProjectionCheckpoints:
        return InMemoryProjectionCheckpoints()


class TestValkeyCheckpoints(ProjectionCheckpointsContract):
    @pytest.fixture
    async def checkpoints(self, settings: Settings) -> AsyncIterator[ValkeyProjectionCheckpoints]:
        store = await ValkeyProjectionCheckpoints.connect(settings.replace(stream_name="K" + uuid.uuid4().hex[:8]))
        yield store
        await store.close()
