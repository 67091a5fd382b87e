"""Issue #21 (5, 6): operator commands against a stack that is down, and wrong input: one error line
within the configured timeout, with a hint, never a traceback, never a local Ray of their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def down_env(tmp_path: Path) -> dict[str, str]:
    """Servers configured on ports nothing listens on; no Ray address; no fleet.env to find."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "RAY_ADDRESS"}
    env.update(
        FLEET_DATA_DIR=str(tmp_path / "no-stack"),
        FLEET_NATS_URL=f"nats://127.0.0.1:{_free_port()}",
        FLEET_VALKEY_URL=f"valkey://127.0.0.1:{_free_port()}/0",
        FLEET_NEO4J_URI=f"bolt://127.0.0.1:{_free_port()}",
        FLEET_NATS_TIMEOUT="2",
    )
    return env


def _cli(env: dict[str, str], *argv: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fleet_actors.cli.main", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    "argv",
    [
        ("projections", "status"),
        ("dlq", "list"),
        ("verify",),
        ("events", "migrate", "--dry-run"),
        ("story", "show", "S-1"),
        ("rebuild",),
        ("projections", "start"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_stack_that_is_down_is_one_line_with_a_hint_in_time(down_env: dict[str, str], argv: tuple[str, ...]) -> None:
    done, seconds = _cli(down_env, *argv)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert "is that stack running?" in lines[0]
    assert "did not answer in time" not in lines[0]  # a refused connection says so
    assert seconds < 15, f"{seconds:.1f} s"  # the configured timeout is 2 s (Python and Ray imports aside)


def test_no_fleet_env_hint_names_the_file_to_load(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "RAY_ADDRESS"}
    env.update(FLEET_DATA_DIR=str(tmp_path / "missing"), FLEET_NATS_TIMEOUT="2")
    done, _ = _cli(env, "story", "show", "S-1")
    assert done.returncode == 2
    assert "no Ray cluster is configured" in done.stderr
    assert f"set -a; . {tmp_path / 'missing'}/fleet.env; set +a" in done.stderr


def test_a_missing_env_file_is_a_usage_error(down_env: dict[str, str], tmp_path: Path) -> None:
    done, _ = _cli(down_env, "projections", "status", "--env-file", str(tmp_path / "nope.env"))
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr


def test_version(down_env: dict[str, str]) -> None:
    done, _ = _cli(down_env, "--version")
    assert done.returncode == 0 and done.stdout.startswith("fleet-actors ")


def test_dev_up_refuses_a_data_dir_that_is_a_file_or_cannot_be_made(tmp_path: Path, capsys) -> None:
    """Issue #21 (6): these raised tracebacks."""
    from fleet_actors.cli.main import main

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["dev", "up", "--no-ray", "--data-dir", str(a_file)]) == 2
    assert main(["dev", "up", "--no-ray", "--data-dir", str(a_file / "below")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "cannot be created" in err and "Traceback" not in err


def test_ctrl_c_in_dev_seed_is_one_line(local_stack, settings, tmp_path: Path, unique_id) -> None:
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "RAY_ADDRESS"}
    env.update(local_stack.env(), FLEET_DATA_DIR=str(tmp_path), FLEET_STREAM_NAME="SEEDINT",
               FLEET_SUBJECT_PREFIX="seedint.events")  # fmt: skip
    seed = subprocess.Popen(
        [sys.executable, "-m", "fleet_actors.cli.main", "dev", "seed", "--stories", "5000", "--events", "50",
         "--prefix", unique_id("int")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert seed.stderr is not None
        text = ""
        while "events" not in text:  # progress has started
            char = seed.stderr.read(1)
            assert char, "seed ended before it made progress"
            text += char
        seed.send_signal(signal.SIGINT)
        _, err = seed.communicate(timeout=60)
    finally:
        if seed.poll() is None:
            seed.kill()
    assert seed.returncode == 130
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ("projections", "start", "examples.decisions_by_role:DecisionsByRole", "--count", "0"),
        ("projections", "deploy", "graph", "2", "--ray", "--count", "999"),
        ("projections", "run", "examples.decisions_by_role:DecisionsByRole", "--index", "3", "--count", "2"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_share_of_partitions_that_does_not_fit_is_one_line_before_connecting(
    down_env: dict[str, str], argv: tuple[str, ...], tmp_path: Path
) -> None:
    env = {**down_env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "fleet_actors.cli.main", *argv], env=env, capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "does not fit" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "decisions.db").exists()
