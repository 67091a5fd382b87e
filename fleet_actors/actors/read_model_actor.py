"""One detached actor holding read-model connections, so clients anywhere (ray://) can query."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import ray

from fleet_actors.actors.naming import get_or_create
from fleet_actors.application.read_models import ContextView, ReadModels
from fleet_actors.composition import open_read_models
from fleet_actors.errors import StoryError
from fleet_actors.settings import Settings

READ_MODELS_NAME = "fleet:read-models"


class ReadModelActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: ReadModels | None = None
        self._connecting = asyncio.Lock()

    async def _read_models(self) -> ReadModels:
        async with self._connecting:
            if self._models is None:
                self._models = await open_read_models(self._settings)
        return self._models

    async def get_context(self, story_id: str) -> ContextView | StoryError:
        try:
            return await (await self._read_models()).get_context(story_id)
        except StoryError as error:
            return error

    async def wait_for_projection(self, story_id: str, version: int, timeout: float) -> ContextView | StoryError:
        try:
            return await (await self._read_models()).wait_for_projection(story_id, version, timeout)
        except StoryError as error:
            return error


@functools.cache
def read_model_actor_class() -> Any:
    return ray.remote(max_restarts=-1, max_task_retries=-1)(ReadModelActor)


def read_models_handle(settings: Settings) -> Any:
    return get_or_create(read_model_actor_class(), READ_MODELS_NAME, settings, settings)
