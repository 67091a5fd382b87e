"""A client that loses its NATS server logs one line per state change, not a traceback per attempt."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fleet_actors.adapters.jetstream.connection import connect_nats
from fleet_actors.devstack.process import free_port
from fleet_actors.devstack.servers import NatsServer


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_outage_logs_one_line_per_state_change(tmp_path, settings, caplog: pytest.LogCaptureFixture) -> None:
    # Our records straight from the module's logger, at its default level: the CLI's main, which other
    # tests call in this process, quiets it for short commands (their one error line says it all).
    connection_log = logging.getLogger("fleet_actors.adapters.jetstream.connection")
    level = connection_log.level
    connection_log.setLevel(logging.NOTSET)
    collected = _Records()
    connection_log.addHandler(collected)
    server = NatsServer(tmp_path / "nats", free_port(), monitor_port=free_port())
    await asyncio.to_thread(lambda: server.start().wait_ready(30))
    nc = None
    try:
        nc = await connect_nats(settings.replace(nats_url=server.url), name="outage-test")
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(4)  # ~16 reconnect attempts at 0.25 s
            await asyncio.to_thread(lambda: server.start().wait_ready(30))
            for _ in range(100):
                if nc.is_connected:
                    break
                await asyncio.sleep(0.1)
            assert nc.is_connected
            await asyncio.sleep(0.2)
        ours = [r for r in collected.records if "outage-test" in r.getMessage()]
        nats_own = [r for r in caplog.records if r.name.startswith("nats")]
        assert not [r for r in caplog.records if r.exc_info], "no tracebacks"
        assert not nats_own
        messages = [r.getMessage() for r in ours]
        assert any("lost; reconnecting" in m for m in messages)
        assert any("restored after" in m for m in messages)
        assert len(ours) <= 4, messages  # lost, the first failure (and maybe a second kind), restored
    finally:
        connection_log.removeHandler(collected)
        connection_log.setLevel(level)
        if nc is not None:
            await nc.close()
        await asyncio.to_thread(server.stop)
