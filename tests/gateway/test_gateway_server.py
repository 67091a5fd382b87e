"""Production manners: bearer auth, health, reflection, graceful shutdown, and the CLI under SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fleet_actors.devstack import ValkeyServer
from fleet_actors.errors import ConfigurationError
from fleet_actors.gateway import serve
from fleet_actors.gateway.server import SERVICE_NAME
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from fleet_actors.settings import Settings
from tests.conftest import unique_id
from tests.gateway.conftest import Gateway, gateway_settings, rpc_error, running_gateway

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
async def gateway(settings: Settings, ray_runtime: str) -> AsyncIterator[Gateway]:
    """This module's gateway requires a bearer token."""
    async with running_gateway(gateway_settings(settings), token=TOKEN) as running:
        yield running


async def test_calls_without_the_right_token_are_unauthenticated(gateway: Gateway) -> None:
    request = pb.ValidateScopeRequest(role="DEV", phase="BUILD")
    for metadata, reason in [
        ((), "missing"),
        ((("authorization", "Bearer nope"),), "wrong"),
        ((("authorization", f"Basic {TOKEN}"),), "wrong"),
        ((("authorization", TOKEN),), "wrong"),
    ]:
        error = await rpc_error(gateway.stub.ValidateScope(request, metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and reason in error.details()
    watch = gateway.stub.WatchStory(pb.WatchStoryRequest(story_id="S1"))
    assert (await rpc_error(watch.read())).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_right_token_is_served(gateway: Gateway) -> None:
    story_id = unique_id("gw-auth")
    created = await gateway.stub.CreateStory(pb.CreateStoryRequest(story_id=story_id, title="t"), metadata=AUTH)
    assert created.version == 1
    lower = (("authorization", f"bearer {TOKEN}"),)
    assert (await gateway.stub.GetStoryHistory(pb.GetStoryHistoryRequest(story_id=story_id), metadata=lower)).events


async def test_health_and_reflection_work_without_a_token(gateway: Gateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    call = reflection_pb2_grpc.ServerReflectionStub(gateway.channel).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = {s.name for s in (await call.read()).list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= listed
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME))
    assert (await call.read()).file_descriptor_response.file_descriptor_proto  # what grpcurl needs
    await call.done_writing()


async def test_graceful_shutdown_drains_in_flight_calls(gateway: Gateway) -> None:
    story_id = unique_id("gw-stop")
    await gateway.stub.CreateStory(pb.CreateStoryRequest(story_id=story_id, title="t"), metadata=AUTH)
    # A second gateway over the same stream (the module's projector keeps the read models current).
    draining = await serve(gateway.settings, address="127.0.0.1:0", token="")
    async with grpc.aio.insecure_channel(draining.address) as channel:
        stub = pb_grpc.ContextServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.WatchStory(pb.WatchStoryRequest(story_id=story_id))
        await watch.initial_metadata()
        # in flight: waits for version 2, which nobody has written yet
        in_flight = asyncio.ensure_future(
            stub.GetContext(pb.GetContextRequest(story_id=story_id, role="QA", min_version=2), timeout=20)
        )
        await asyncio.sleep(0.3)
        started = time.monotonic()
        stopping = asyncio.ensure_future(draining.stop(grace=10))

        assert (await health.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        health.cancel()
        assert await asyncio.wait_for(watch.code(), timeout=5) == grpc.StatusCode.OK  # watches end cleanly
        refused = await rpc_error(stub.ValidateScope(pb.ValidateScopeRequest(role="QA", phase="TEST")))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE

        await gateway.client.create_subtask(story_id, "T1", "Form", "DEV")  # lets the in-flight call finish
        assert (await in_flight).version == "2"
        await stopping
        assert time.monotonic() - started < 8


async def test_readiness_follows_the_backends_and_liveness_does_not(
    settings: Settings, ray_runtime: str, tmp_path: Path
) -> None:
    valkey = ValkeyServer(tmp_path / "valkey").start().wait_ready()
    try:
        own = gateway_settings(settings).replace(valkey_url=valkey.url)
        running = await serve(own, address="127.0.0.1:0", health_interval=0.2)
        try:
            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def reaches(service: str, status: int) -> None:
                    deadline = time.monotonic() + 15
                    while (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status != status:
                        assert time.monotonic() < deadline, f"{service!r} never reached {status}"
                        await asyncio.sleep(0.1)

                await reaches(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
                valkey.stop()
                await reaches(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
                await reaches("", health_pb2.HealthCheckResponse.SERVING)  # no restart would cure it
                valkey.start().wait_ready()
                await reaches(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        finally:
            await running.stop(grace=1.0)
    finally:
        valkey.stop()


async def test_a_second_gateway_on_the_same_address_fails_to_start(gateway: Gateway) -> None:
    with pytest.raises(ConfigurationError, match="cannot listen"):
        await serve(gateway.settings, address=gateway.running.address)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigurationError, match="cannot listen"):
            await serve(gateway.settings, address=f"127.0.0.1:{taken.getsockname()[1]}")


def test_the_cli_serves_until_sigterm(gateway: Gateway, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **gateway.settings.as_env(),
        "FLEET_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "FLEET_GATEWAY_TOKEN": "",
    }
    program = (
        "import argparse, sys\n"
        "from fleet_actors.cli.gateway_cmd import register\n"
        "parser = argparse.ArgumentParser()\n"
        "register(parser.add_subparsers(dest='command', required=True))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program, "gateway", "--address", "127.0.0.1:0", "--grace", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = None
        deadline = time.monotonic() + 60
        for line in process.stdout:  # Ray may print to a driver's stdout too: look for our lines only
            if line.startswith("FLEET_GATEWAY_ADDRESS="):
                address = line.strip().split("=", 1)[1]
            if line.strip() == "ready":
                break
            assert time.monotonic() < deadline, "the gateway did not become ready"
        assert address, process.stderr.read() if process.poll() is not None else "no address printed"

        async def probe() -> int:
            async with grpc.aio.insecure_channel(address) as channel:
                response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                return response.status

        assert asyncio.run(probe()) == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "gateway listening on" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_the_gateway_recovers_its_nats_connection_after_a_stall(
    settings: Settings, ray_runtime: str, tmp_path: Path
) -> None:
    """Issue #21 (4): after `kill -STOP`/`-CONT` of nats-server for 2 s or more, the gateway's NATS
    connection was gone for good while health said SERVING. It must be NOT_SERVING while NATS is
    stalled and recover by itself."""
    from fleet_actors.devstack import NatsServer

    nats_server = NatsServer(tmp_path / "nats").start().wait_ready()
    try:
        own = gateway_settings(settings).replace(nats_url=nats_server.url, nats_timeout=1.0)
        running = await serve(own, address="127.0.0.1:0", health_interval=0.2)
        try:
            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def reaches(status: int, within: float = 20) -> None:
                    deadline = time.monotonic() + within
                    while (await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))).status != status:
                        assert time.monotonic() < deadline, f"never reached {status}"
                        await asyncio.sleep(0.1)

                await reaches(health_pb2.HealthCheckResponse.SERVING)
                assert nats_server.pid is not None
                os.kill(nats_server.pid, signal.SIGSTOP)
                try:
                    await reaches(health_pb2.HealthCheckResponse.NOT_SERVING, within=5)
                    await asyncio.sleep(3)  # a stall of several seconds, pings and PONGs late
                finally:
                    os.kill(nats_server.pid, signal.SIGCONT)
                await reaches(health_pb2.HealthCheckResponse.SERVING)
                await asyncio.sleep(2)  # late PONGs and replies have arrived by now
                await reaches(health_pb2.HealthCheckResponse.SERVING, within=5)
                # a round trip through the gateway's own connection (its read loop must be alive)
                events = running._backends.events
                await asyncio.wait_for(events.connection.jsm().account_info(), 5)
        finally:
            await running.stop(grace=1.0)
    finally:
        if nats_server.pid:
            os.kill(nats_server.pid, signal.SIGCONT)
        nats_server.stop()
