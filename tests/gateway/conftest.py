"""A real gateway per test module: 127.0.0.1:0, the session's servers, a stream of its own.

Commands go through the gateway to story actors on the session's Ray runtime; projectors run in
this process over the module's stream, so GetContext and the graph see what the commands wrote.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from fleet_actors.client import AsyncFleetClient
from fleet_actors.gateway import RunningGateway, serve
from fleet_actors.gateway.status_mapping import FIELD_KEY
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from fleet_actors.settings import Settings
from tests.conftest import unique_id
from tests.integration.conftest import RunningProjectors


@dataclass
class Gateway:
    settings: Settings
    running: RunningGateway
    channel: grpc.aio.Channel
    stub: pb_grpc.ContextServiceStub
    #: the same story actors, called directly: to check what the gateway did
    client: AsyncFleetClient


def gateway_settings(settings: Settings) -> Settings:
    """The session's servers and Ray namespace with a stream and subject prefix of their own."""
    tag = uuid.uuid4().hex[:10]
    return settings.replace(stream_name=f"GW{tag.upper()}", subject_prefix=f"gw{tag}.events")


@asynccontextmanager
async def running_gateway(settings: Settings, *, token: str = "") -> AsyncIterator[Gateway]:
    """A gateway and one projector over ``settings``' stream; stopped (gracefully) on exit."""
    projectors = await RunningProjectors(settings, 1).start()
    try:
        running = await serve(settings, address="127.0.0.1:0", token=token)
        try:
            async with grpc.aio.insecure_channel(running.address) as channel:
                yield Gateway(
                    settings,
                    running,
                    channel,
                    pb_grpc.ContextServiceStub(channel),
                    AsyncFleetClient(settings, OrderedDict()),
                )
        finally:
            await running.stop(grace=1.0)
    finally:
        await projectors.stop()


@pytest.fixture(scope="module")
async def gateway(settings: Settings, ray_runtime: str) -> AsyncIterator[Gateway]:
    async with running_gateway(gateway_settings(settings)) as running:
        yield running


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The status a call failed with (fails the test if it succeeded)."""
    try:
        result = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {result}")


def error_field(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(FIELD_KEY)


async def new_story(stub: pb_grpc.ContextServiceStub, title: str = "Checkout flow") -> str:
    story_id = unique_id("gw")
    await stub.CreateStory(pb.CreateStoryRequest(story_id=story_id, title=title, description="pay with cards"))
    return story_id
