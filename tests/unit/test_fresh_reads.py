"""Fresh reads: a context read reflects the story's head at the time of the call, within a bound."""

from __future__ import annotations

import asyncio

from fleet_actors.adapters.memory import InMemoryDocuments, InMemoryGraph
from fleet_actors.application.read_models import ReadModels
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from tests.contracts.read_models_contract import new_story_id, story_events


async def head(version: int) -> int:
    return version


async def test_waits_for_the_document_to_reach_the_head():
    documents = InMemoryDocuments()
    story_id = new_story_id()
    events = story_events(story_id, 5)
    await documents.commit([fold(StoryState(story_id), events[:2])])

    async def projector_catches_up() -> None:
        await asyncio.sleep(0.05)
        await documents.commit([fold(StoryState(story_id), events)])

    catching_up = asyncio.create_task(projector_catches_up())
    view, target = await ReadModels(documents, InMemoryGraph()).fresh_context(story_id, head(5), timeout=2.0)
    await catching_up
    assert target == 5 and view is not None and view.version == 5


async def test_past_the_bound_it_answers_with_what_is_there():
    documents = InMemoryDocuments()
    story_id = new_story_id()
    await documents.commit([fold(StoryState(story_id), story_events(story_id, 2))])
    started = asyncio.get_running_loop().time()
    view, target = await ReadModels(documents, InMemoryGraph()).fresh_context(story_id, head(7), timeout=0.1)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert target == 7 and view is not None and view.version == 2  # the response says which version it is


async def test_a_caught_up_document_is_answered_at_once():
    documents = InMemoryDocuments()
    story_id = new_story_id()
    await documents.commit([fold(StoryState(story_id), story_events(story_id, 3))])
    view, _ = await asyncio.wait_for(
        ReadModels(documents, InMemoryGraph()).fresh_context(story_id, head(3), timeout=5.0), 0.05
    )
    assert view is not None and view.version == 3
