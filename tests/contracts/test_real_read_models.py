"""The Neo4j (ArcadeDB over Bolt here) and Valkey adapters pass the same read-model contracts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import valkey.asyncio

from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.adapters.valkey import ContextCache, ValkeyDeadLetterIndex, ValkeyProjectionControl
from fleet_actors.settings import Settings
from tests.contracts.read_models_contract import (
    ContextDocumentsContract,
    DeadLetterIndexContract,
    GraphReadModelContract,
    ProjectionControlContract,
    new_story_id,
    parked,
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

    async def test_two_streams_never_see_each_others_stories(self, settings: Settings):
        # Projectors of another stream on the same Valkey once "released" a story they did not own.
        ours, theirs = (settings.replace(stream_name=f"K{uuid.uuid4().hex[:8].upper()}") for _ in range(2))
        mine, other = await ValkeyDeadLetterIndex.connect(ours), await ValkeyDeadLetterIndex.connect(theirs)
        try:
            story_id = new_story_id()
            await mine.hold(parked(story_id))
            await mine.request_release(story_id, "skip")
            assert story_id not in await other.held() and story_id not in await other.pending_releases()
            await other.released(story_id)
            assert story_id in await mine.held()
        finally:
            await mine.close()
            await other.close()

    async def test_stories_held_under_the_older_key_are_still_read(self, settings: Settings):
        index = await ValkeyDeadLetterIndex.connect(settings)
        raw = valkey.asyncio.Valkey.from_url(settings.valkey_url)
        try:
            story_id = new_story_id()
            old = replace(parked(story_id), subject=f"{settings.subject_prefix}.{story_id}.x.0")
            await raw.hset("dlq:held", story_id, old.to_json())
            assert (await index.held())[story_id] == old
            await index.released(story_id)
            assert story_id not in await index.held() and not await raw.hexists("dlq:held", story_id)
        finally:
            await raw.aclose()
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
