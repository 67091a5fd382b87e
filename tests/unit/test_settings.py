"""Settings come from FLEET_* variables and refuse values that cannot work."""

import pytest

from fleet_actors.actors.story_actor import story_actor_options
from fleet_actors.errors import ConfigurationError
from fleet_actors.settings import Settings


def test_story_actor_memory_comes_from_the_environment_and_becomes_a_ray_reservation():
    settings = Settings.from_env({"FLEET_STORY_ACTOR_MEMORY_MB": "100"})
    assert story_actor_options(settings)["memory"] == 100 * 2**20
    assert "memory" not in story_actor_options(Settings())  # nothing reserved by default


def test_a_negative_story_actor_memory_is_refused():
    with pytest.raises(ConfigurationError, match="FLEET_STORY_ACTOR_MEMORY_MB"):
        Settings(story_actor_memory_mb=-1)


def test_the_keep_alive_period_comes_from_the_environment_and_must_be_positive():
    assert Settings.from_env({"FLEET_ACTOR_KEEP_ALIVE_SECONDS": "45"}).actor_keep_alive_seconds == 45.0
    with pytest.raises(ConfigurationError, match="FLEET_ACTOR_KEEP_ALIVE_SECONDS"):
        Settings(actor_keep_alive_seconds=0)


def test_the_dev_stack_ray_node_runs_with_longer_housekeeping_intervals_unless_told_otherwise(tmp_path, monkeypatch):
    from fleet_actors.devstack.ray_head import IDLE_TUNING, RayHead

    head = RayHead(tmp_path / "ray", 0)
    head._prepare()
    try:
        monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "250")
        env = head._environment()
    finally:
        head._cleanup()
    assert env["RAY_memory_monitor_refresh_ms"] == "250"  # the environment of `dev up` wins
    assert all(env[name] == value for name, value in IDLE_TUNING.items() if name != "RAY_memory_monitor_refresh_ms")


def test_worker_nodes_preload_the_story_actor_code_and_use_the_heads_token(tmp_path):
    """Worker nodes (scripts/rehearse_multinode.py): the environment is read by each node's own processes, so the
    preload of the story actor's code (spare workers) must be set there as on the head."""
    from fleet_actors.actors.spare_workers import PRELOAD_MODULES
    from fleet_actors.devstack.ray_head import IDLE_TUNING, RayHead
    from fleet_actors.devstack.ray_worker import RayWorkerNode

    head = RayHead(tmp_path / "ray", 0)
    head._prepare()
    worker = RayWorkerNode(tmp_path / "worker", head)
    try:
        worker._prepare()
        env = worker._environment()
    finally:
        worker._cleanup()
        head._cleanup()
    assert env["RAY_preload_python_modules"] == ",".join(PRELOAD_MODULES)
    assert env["RAY_AUTH_TOKEN_PATH"] == str(head.token_path)
    assert all(name in env for name in IDLE_TUNING)
