"""`fleet-actors check`: one line, Nagios exit codes (issue #21, "deliver besides")."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from fleet_actors.cli import check_cmd
from fleet_actors.cli.main import main
from fleet_actors.composition import open_projection_control
from tests.integration.conftest import RunningProjectors, write_story


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _check(capsys, *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, ["check", *argv])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return code, out[0]


async def test_check_is_ok_warns_on_a_pause_and_is_critical_when_servers_are_down(
    stream_settings, execute, unique_id, monkeypatch, capsys
):
    await write_story(execute, unique_id("CK"))
    settings = stream_settings = stream_settings.replace(projectors=1)  # as many as run here
    monkeypatch.setattr(check_cmd, "settings_from", lambda args: settings)
    running = await RunningProjectors(stream_settings, 1).start()
    control = await open_projection_control(stream_settings)
    try:
        for _ in range(100):  # the projector has published a heartbeat and caught up
            code, line = await _check(capsys)
            if code == 0 and line.startswith("OK: lag 0 events"):
                break
            await asyncio.sleep(0.2)
        assert code == 0 and line.startswith("OK: lag 0 events"), line
        assert "| lag_events=0;1000;10000" in line
        await control.record_job_progress("job-y", heartbeat=str(time.time()))  # a job making progress
        await control.pause("job-y")
        code, line = await _check(capsys, "--lag-events-warn", "5")
        assert code == 1 and line.startswith("WARNING: projectors paused by rebuild job-y (WARNING)"), line
        await control.resume()
        code, line = await _check(capsys, "--json", "--gateway", f"127.0.0.1:{_free_port()}")
        assert code == 2 and json.loads(line)["status"] == "CRITICAL"
        settings = stream_settings.replace(nats_url=f"nats://127.0.0.1:{_free_port()}", nats_timeout=1.0)
        code, line = await _check(capsys)
        assert code == 2 and line.startswith("CRITICAL: cannot reach NATS"), line
    finally:
        await control.resume()
        await control.close()
        await running.stop()
