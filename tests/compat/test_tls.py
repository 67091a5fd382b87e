"""Item 5 as the task-derivation adapter sees it: stubs generated from protos/, over TLS, trusting the
gateway's certificate (the pair `dev up --tls` makes); a plaintext caller is refused."""

from __future__ import annotations

import grpc
import pytest

from fleet_actors.settings import Settings
from fleet_actors.tls import ensure_self_signed
from tests.compat.conftest import Stubs
from tests.conftest import unique_id
from tests.gateway.conftest import gateway_settings, running_gateway


async def test_a_caller_over_tls_writes_and_reads_back(
    settings: Settings, ray_runtime: str, stubs: Stubs, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pair = ensure_self_signed(tmp_path_factory.mktemp("compat-tls"))
    own = gateway_settings(settings).replace(gateway_tls_cert=str(pair.cert), gateway_tls_key=str(pair.key))
    pb = stubs.pb
    async with running_gateway(own) as gateway:
        address = gateway.running.address.replace("127.0.0.1", "localhost")
        credentials = grpc.ssl_channel_credentials(root_certificates=pair.cert.read_bytes())
        async with grpc.aio.secure_channel(address, credentials) as channel:
            stub = stubs.grpc.ContextServiceStub(channel)
            story_id = unique_id("compat-tls")
            created = await stub.CreateStory(pb.CreateStoryRequest(story_id=story_id, title="over TLS"))
            read = await stub.GetContext(pb.GetContextRequest(story_id=story_id, role="developer", phase="PLAN"))
            assert int(read.version) == created.version and "over TLS" in read.context
        async with grpc.aio.insecure_channel(address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.grpc.ContextServiceStub(plain).GetContext(pb.GetContextRequest(story_id=story_id))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
