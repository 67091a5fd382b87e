"""Servers older than 2.12 silently ignore our concurrency headers: they are refused, clearly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fleet_actors.adapters.jetstream import connection
from fleet_actors.errors import BackendUnavailable, ServerTooOld
from fleet_actors.settings import Settings


class FakeClient:
    def __init__(self, version: str) -> None:
        major, minor, patch = (int(x) for x in version.split("."))
        self.connected_server_version = SimpleNamespace(major=major, minor=minor, patch=patch)
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_old_server_refused(monkeypatch):
    fake = FakeClient("2.9.10")

    async def connect(*args, **kwargs):
        return fake

    monkeypatch.setattr(connection, "_connected", connect)
    with pytest.raises(ServerTooOld, match=r"2\.12 or newer"):
        await connection.connect_nats(Settings())
    assert fake.closed


async def test_current_server_accepted(monkeypatch):
    async def connect(*args, **kwargs):
        return FakeClient("2.15.1")

    monkeypatch.setattr(connection, "_connected", connect)
    assert await connection.connect_nats(Settings())


async def test_unreachable_server_is_a_retryable_error():
    with pytest.raises(BackendUnavailable, match=r"cannot reach NATS|did not answer"):
        await connection.connect_nats(Settings(nats_url="nats://127.0.0.1:1", nats_timeout=1))
