"""A NATS outage seen through gRPC: UNAVAILABLE, naming the server, never its password."""

from __future__ import annotations

from pathlib import Path

import grpc

from fleet_actors.devstack import NatsServer
from fleet_actors.gateway import serve
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from fleet_actors.settings import Settings
from tests.conftest import unique_id
from tests.gateway.conftest import gateway_settings, rpc_error

SECRET = "n4ts-Pa55word"


async def test_a_nats_outage_answers_unavailable_without_the_password(
    settings: Settings, ray_runtime: str, tmp_path: Path
) -> None:
    nats = NatsServer(tmp_path / "nats").start().wait_ready()
    try:
        # the server has no authentication and ignores the credentials; what matters is where they show
        url = f"nats://fleet:{SECRET}@127.0.0.1:{nats.port}"
        own = gateway_settings(settings).replace(nats_url=url, nats_timeout=1.0)
        running = await serve(own, address="127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = pb_grpc.ContextServiceStub(channel)
                nats.stop()
                error = await rpc_error(
                    stub.CreateStory(pb.CreateStoryRequest(story_id=unique_id("gw-outage"), title="t"), timeout=60)
                )
        finally:
            await running.stop(grace=1.0)
    finally:
        nats.stop()
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert SECRET not in error.details() and "fleet:" not in error.details()
    assert f"nats://***@127.0.0.1:{nats.port}" in error.details()  # which server failed is still said
    assert SECRET not in str(error.trailing_metadata())
