"""The local stack's credential files and dev up's output, without servers."""

from __future__ import annotations

import json
from pathlib import Path

from fleet_actors.cli.main import _shown
from fleet_actors.devstack.credentials import NATS_ROLES, StackCredentials


def test_credentials_are_generated_once_private_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "credentials"
    first = StackCredentials.load_or_create(folder, graph_default="")
    assert set(first.nats) == set(NATS_ROLES)
    values = [*first.nats.values(), first.valkey, first.graph]
    assert len(set(values)) == len(values) and all(len(v) >= 32 for v in values)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert not [v for v in values if v in repr(first)]
    again = StackCredentials.load_or_create(folder, graph_default="ignored-once-saved")
    assert (again.nats, again.valkey, again.graph) == (first.nats, first.valkey, first.graph)


def test_a_missing_role_is_added_and_an_old_graph_keeps_its_password(tmp_path: Path) -> None:
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "credentials.json").write_text(json.dumps({"nats": {"admin": "kept-admin"}, "valkey": "kept-valkey"}))
    loaded = StackCredentials.load_or_create(folder, graph_default="fleet-actors-dev")
    assert loaded.nats["admin"] == "kept-admin" and set(loaded.nats) == set(NATS_ROLES)
    assert (loaded.valkey, loaded.graph) == ("kept-valkey", "fleet-actors-dev")
    assert json.loads((folder / "credentials.json").read_text())["nats"] == loaded.nats


def test_dev_up_shows_no_secret_unless_asked() -> None:
    assert _shown("FLEET_NATS_URL", "nats://admin:s3cret@127.0.0.1:4222") == "nats://***@127.0.0.1:4222"
    assert _shown("FLEET_VALKEY_URL", "valkey://:s3cret@127.0.0.1:6379/0") == "valkey://***@127.0.0.1:6379/0"
    assert _shown("FLEET_NEO4J_PASSWORD", "s3cret") == "***"
    assert _shown("FLEET_NATS_PASSWORD", "s3cret") == "***"
    assert _shown("RAY_AUTH_TOKEN_PATH", "/data/ray/auth_token") == "/data/ray/auth_token"
    assert _shown("FLEET_NEO4J_USER", "root") == "root"


def test_fleet_env_is_private_even_over_a_file_left_by_a_killed_run(tmp_path: Path) -> None:
    from fleet_actors.devstack import LocalStack

    stack = LocalStack(tmp_path / "dev", ray=False)  # not started: only its settings are written
    leftover = stack.env_path.with_name("fleet.env.tmp")
    leftover.write_text("half a file")
    leftover.chmod(0o644)
    written = stack.write_env_file()
    assert written.stat().st_mode & 0o777 == 0o600 and not leftover.exists()
    assert stack.credentials.valkey in written.read_text()
