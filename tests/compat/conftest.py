"""The drop-in suite's fixtures: stubs generated from protos/ (as a caller of the Context Service
would build them, not the package's own modules) talking to real gateways on the session's stack.

``compat`` is a gateway with the defaults the fleet's callers meet (changes that cannot be applied
are skipped, secrets redacted before appending and in responses); ``strict`` has
``update_context_all_or_nothing`` on, and redaction before appending off (so that stored secrets
show what the response-side redaction does) with one operator pattern added.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import grpc_tools
import pytest
from grpc_tools import protoc

from fleet_actors.client import AsyncFleetClient
from fleet_actors.settings import Settings
from tests.conftest import unique_id
from tests.gateway.conftest import gateway_settings, running_gateway

PROTOS = Path(__file__).parents[2] / "protos"
#: an operator's own secret shape, added with FLEET_REDACT_PATTERNS on the strict gateway
OPERATOR_PATTERNS = json.dumps({"ticket_secret": r"\bTKT-[0-9]{6}\b"})


@dataclass(frozen=True)
class Stubs:
    """The modules protoc generated from protos/fleet/context/v1/context_service.proto."""

    pb: ModuleType
    grpc: ModuleType


@dataclass
class Compat:
    settings: Settings
    stub: Any
    pb: ModuleType
    #: the story actors, called directly: to check what the gateway appended
    client: AsyncFleetClient

    async def new_story(self, title: str = "Checkout flow", description: str = "pay with saved cards") -> str:
        story_id = unique_id("compat")
        await self.stub.CreateStory(self.pb.CreateStoryRequest(story_id=story_id, title=title, description=description))
        return story_id

    async def version(self, story_id: str) -> int:
        return (await self.client.get_story(story_id)).version

    async def update(self, story_id: str, *changes: Any, role: str = "developer", task_id: str = "") -> Any:
        request = self.pb.UpdateContextRequest(story_id=story_id, role=role, task_id=task_id, changes=list(changes))
        return await self.stub.UpdateContext(request)

    def change(self, operation: str, entity: str, payload: Any = None, entity_id: str = "", reason: str = "") -> Any:
        text = "" if payload is None else payload if isinstance(payload, str) else json.dumps(payload)
        return self.pb.ContextChange(
            operation=operation, entity_type=entity, entity_id=entity_id, payload=text, reason=reason
        )


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Stubs:
    """Generate the Python stubs from protos/ with protoc, the way any caller builds its client."""
    out = tmp_path_factory.mktemp("compat-stubs")
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    source = "fleet/context/v1/context_service.proto"
    assert protoc.main(["protoc", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={out}",
                        f"--grpc_python_out={out}", source]) == 0  # fmt: skip
    for folder in (out / "fleet", out / "fleet" / "context", out / "fleet" / "context" / "v1"):
        (folder / "__init__.py").touch()
    sys.path.insert(0, str(out))
    try:
        return Stubs(
            importlib.import_module("fleet.context.v1.context_service_pb2"),
            importlib.import_module("fleet.context.v1.context_service_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


async def _compat(settings: Settings, stubs: Stubs) -> AsyncIterator[Compat]:
    async with running_gateway(settings) as gateway, grpc.aio.insecure_channel(gateway.running.address) as channel:
        yield Compat(settings, stubs.grpc.ContextServiceStub(channel), stubs.pb, gateway.client)


@pytest.fixture(scope="session")
async def compat(settings: Settings, ray_runtime: str, stubs: Stubs) -> AsyncIterator[Compat]:
    """A gateway with the default settings."""
    async for running in _compat(gateway_settings(settings), stubs):
        yield running


@pytest.fixture(scope="session")
async def strict(settings: Settings, ray_runtime: str, stubs: Stubs) -> AsyncIterator[Compat]:
    """All-or-nothing UpdateContext; secrets stored as sent (redacted in responses only), plus an operator pattern."""
    changed = gateway_settings(settings).replace(
        update_context_all_or_nothing=True, redact_on_append=False, redact_patterns=OPERATOR_PATTERNS
    )
    async for running in _compat(changed, stubs):
        yield running
