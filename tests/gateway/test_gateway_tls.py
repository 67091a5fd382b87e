"""TLS on the real gateway: served from the settings' pair, refused in plaintext, mutual TLS on request.

The server pair comes from the function `dev up --tls` uses (tls.ensure_self_signed), so this also
proves that pair works with gRPC clients that trust it as their CA.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet_actors.cli.main import main
from fleet_actors.errors import ConfigurationError
from fleet_actors.gateway import RunningGateway, serve
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from fleet_actors.settings import Settings
from fleet_actors.tls import CertificatePair, ensure_self_signed, gateway_aio_channel, write_self_signed
from tests.gateway.conftest import gateway_settings, rpc_error

REQUEST = pb.ValidateScopeRequest(role="DEV", phase="BUILD")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificatePair]:
    folder = tmp_path_factory.mktemp("tls")
    return {
        "server": ensure_self_signed(folder / "server"),
        "client": write_self_signed(folder / "client", "agent", client=True),
        "stranger": write_self_signed(folder / "stranger", "stranger", client=True),
    }


def tls_settings(settings: Settings, pair: CertificatePair, client_ca: Path | None = None) -> Settings:
    return gateway_settings(settings).replace(
        gateway_tls_cert=str(pair.cert),
        gateway_tls_key=str(pair.key),
        gateway_tls_client_ca=str(client_ca or ""),
    )


@pytest.fixture(scope="module")
async def tls_gateway(
    settings: Settings, ray_runtime: str, certs: dict[str, CertificatePair]
) -> AsyncIterator[RunningGateway]:
    own = tls_settings(settings, certs["server"]).replace(gateway_health_address="127.0.0.1:0")
    running = await serve(own, address="127.0.0.1:0")
    yield running
    await running.stop(grace=1.0)


@pytest.fixture(scope="module")
async def mtls_gateway(
    settings: Settings, ray_runtime: str, certs: dict[str, CertificatePair]
) -> AsyncIterator[RunningGateway]:
    running = await serve(tls_settings(settings, certs["server"], certs["client"].cert), address="127.0.0.1:0")
    yield running
    await running.stop(grace=1.0)


def client(pair: CertificatePair, own: CertificatePair | None = None) -> Settings:
    """A client's settings: trust the server's self-signed certificate, present ``own`` if given."""
    return Settings(
        gateway_tls=True,
        gateway_tls_ca=str(pair.cert),
        gateway_tls_client_cert=str(own.cert) if own else "",
        gateway_tls_client_key=str(own.key) if own else "",
    )


async def validate(settings: Settings, address: str) -> pb.ValidateScopeResponse:
    async with gateway_aio_channel(settings, address) as channel:
        return await pb_grpc.ContextServiceStub(channel).ValidateScope(REQUEST, timeout=10)


async def test_a_client_that_trusts_the_certificate_is_served(
    tls_gateway: RunningGateway, certs: dict[str, CertificatePair]
) -> None:
    assert tls_gateway.tls == "TLS"
    response = await validate(client(certs["server"]), tls_gateway.address)
    assert "CASE_HEADER" in response.missing  # answered by the ContextService itself
    # localhost is in the certificate too
    assert await validate(client(certs["server"]), f"localhost:{tls_gateway.port}") == response


async def test_plaintext_and_untrusting_clients_are_refused(
    tls_gateway: RunningGateway, certs: dict[str, CertificatePair]
) -> None:
    async with grpc.aio.insecure_channel(tls_gateway.address) as channel:
        error = await rpc_error(pb_grpc.ContextServiceStub(channel).ValidateScope(REQUEST, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert (await rpc_error(health)).code() == grpc.StatusCode.UNAVAILABLE
    # TLS, but trusting another certificate than the server's: the handshake fails
    error = await rpc_error(validate(client(certs["stranger"]), tls_gateway.address))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_plaintext_health_listener_serves_health_only(tls_gateway: RunningGateway) -> None:
    assert tls_gateway.health_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_gateway.health_port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fleet.context.v1.ContextService"), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        error = await rpc_error(pb_grpc.ContextServiceStub(channel).ValidateScope(REQUEST, timeout=5))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    mtls_gateway: RunningGateway, certs: dict[str, CertificatePair]
) -> None:
    assert mtls_gateway.tls == "mutual TLS"
    for refused in (client(certs["server"]), client(certs["server"], certs["stranger"])):
        error = await rpc_error(validate(refused, mtls_gateway.address))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert (await validate(client(certs["server"], certs["client"]), mtls_gateway.address)).missing


async def test_missing_or_wrong_files_are_one_line_configuration_errors(
    settings: Settings, certs: dict[str, CertificatePair], tmp_path: Path
) -> None:
    server = certs["server"]
    missing = tmp_path / "missing.pem"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (Settings(gateway_tls_cert=str(missing), gateway_tls_key=str(server.key)), "FLEET_GATEWAY_TLS_CERT"),
        (Settings(gateway_tls_cert=str(not_pem), gateway_tls_key=str(server.key)), "no PEM certificate"),
        (Settings(gateway_tls_cert=str(server.cert), gateway_tls_key=str(not_pem)), "no unencrypted PEM"),
        (
            Settings(gateway_tls_cert=str(server.cert), gateway_tls_key=str(certs["client"].key)),
            "is not the key of the certificate",
        ),
        (tls_settings(settings, server, missing), "FLEET_GATEWAY_TLS_CLIENT_CA: cannot read"),
    ]
    for bad, expected in cases:
        with pytest.raises(ConfigurationError, match=expected) as raised:
            await serve(bad, address="127.0.0.1:0")
        assert "\n" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="go together"):
        Settings.from_env({"FLEET_GATEWAY_TLS_CERT": str(server.cert)})
    with pytest.raises(ConfigurationError, match="needs FLEET_GATEWAY_TLS_CERT"):
        Settings(gateway_tls_client_ca=str(server.cert))


def test_the_self_signed_pair_is_private_and_reused(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path / "tls")
    assert first.key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o077 == 0
    certificate = first.cert.read_bytes()
    again = ensure_self_signed(tmp_path / "tls")
    assert again.cert.read_bytes() == certificate  # clients that trust it keep working
    first.key.write_text("broken\n")
    renewed = ensure_self_signed(tmp_path / "tls")
    assert renewed.cert.read_bytes() != certificate
    assert renewed.key.stat().st_mode & 0o777 == 0o600


async def test_the_cli_health_check_dials_with_tls_when_configured(
    tls_gateway: RunningGateway,
    certs: dict[str, CertificatePair],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The gateway answers on this test's event loop: the blocking CLI runs in a thread."""

    def check(*args: str) -> Awaitable[int]:
        return asyncio.to_thread(main, ["gateway", "--check", *args])

    monkeypatch.chdir(tmp_path)  # no fleet.env of a local stack around
    for name in [key for key in os.environ if key.startswith("FLEET_GATEWAY")]:
        monkeypatch.delenv(name)
    assert await check("--address", tls_gateway.address) == 2
    assert "does not answer a health check over plaintext" in capsys.readouterr().err

    monkeypatch.setenv("FLEET_GATEWAY_TLS_CA", str(certs["server"].cert))
    assert await check("--address", tls_gateway.address) == 0
    assert capsys.readouterr().out.split() == ["SERVING"]
    assert await check("fleet.context.v1.ContextService", "--address", tls_gateway.address) == 0

    monkeypatch.delenv("FLEET_GATEWAY_TLS_CA")  # the probes' plaintext listener
    assert await check("--address", f"127.0.0.1:{tls_gateway.health_port}") == 0
