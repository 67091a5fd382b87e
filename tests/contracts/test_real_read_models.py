"""The Neo4j (ArcadeDB over Bolt here) and Valkey adapters pass the same read-model contracts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.valkey import ContextCache, ValkeyDeadLetterIndex, ValkeyProjectionControl
from fleet_actors.settings import Settings
from tests.contracts.read_models_contract import (
    ContextDocumentsContract,
    DeadLetterIndexContract,
    GraphReadModelContract,
    ProjectionControlContract,
)


class TestNeo4jGraph(GraphReadModelContract):
    @pytest.fixture
    async def graph(self, settings: Settings) -> AsyncIterator[GraphStore]:
        store = await GraphStore.connect(settings)
        yield store
        await store.close()


class TestValkeyDocuments(ContextDocumentsContract):
    @pytest.fixture
    async def documents(self, settings: Settings) -> AsyncIterator[ContextCache]:
        cache = await ContextCache.connect(settings)
        yield cache
        await cache.close()


class TestValkeyDeadLetterIndex(DeadLetterIndexContract):
    @pytest.fixture
    async def dead_letter_index(self, settings: Settings) -> AsyncIterator[ValkeyDeadLetterIndex]:
        index = await ValkeyDeadLetterIndex.connect(settings)
        yield index
        await index.close()


class TestValkeyProjectionControl(ProjectionControlContract):
    @pytest.fixture
    async def control(self, settings: Settings) -> AsyncIterator[ValkeyProjectionControl]:
        stream = "K" + uuid.uuid4().hex[:10].upper()
        control = await ValkeyProjectionControl.connect(settings.replace(stream_name=stream))
        yield control
        await control.close()


class TestValkeyDocumentsInAKeySpace(ContextDocumentsContract):
    """A documents projection's own key space (projections/documents_projection.py) keeps the same rules."""

    @pytest.fixture
    async def documents(self, settings: Settings) -> AsyncIterator[ContextCache]:
        cache = await ContextCache.connect(settings, space="v2")
        yield cache
        await cache.close()
