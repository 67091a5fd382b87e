"""Issue #21 (9): the README's local-cluster commands work as written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fleet_actors.settings import load_env_file


def _cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet_actors.cli.main", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dev_up_configures_a_local_archive_that_archive_commands_use(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    env_file = data_dir / "fleet.env"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "RAY_ADDRESS"}
    up = subprocess.Popen(
        [sys.executable, "-m", "fleet_actors.cli.main", "dev", "up", "--data-dir", str(data_dir), "--no-ray"],
        env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert env_file.exists(), "dev up did not become ready"
        env = load_env_file(env_file)
        assert Path(env["FLEET_ARCHIVE_URL"]) == (data_dir / "archive").resolve()
        shell = {**base, **env, "FLEET_DATA_DIR": str(data_dir)}  # as after `set -a; . .fleet/fleet.env`
        steps = [("dev", "seed", "--stories", "3", "--events", "20"), ("archive", "run"), ("archive", "status")]
        export = ("events", "export", "--since", "2026-01-01T00:00:00Z", "--format", "parquet", "--out")
        for argv in [*steps, ("archive", "verify"), (*export, str(tmp_path / "events.parquet"))]:
            done = _cli(*argv, env=shell)
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()


def test_gateway_on_an_address_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "RAY_ADDRESS"}
        env.update(FLEET_GATEWAY_ADDRESS=address, FLEET_DATA_DIR=str(tmp_path))
        done = _cli("gateway", env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: FLEET_GATEWAY_ADDRESS {address} is in use: a gateway already serves there (the `dev up` of "
        "fleet.env starts one; `fleet-actors gateway --check` asks it). To run another one pass --address "
        "HOST:PORT (port 0: any free port)"
    ]
