"""Shared fixtures: one local stack per session, started only when a test asks for it.

Tests isolate from each other by unique names (story ids, stream names, Ray namespaces),
never by starting servers of their own.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Ray reads RAY_AUTH_MODE once, when `ray` is imported, and importing fleet_actors imports
# ray: this has to run before the first fleet_actors import. Token mode as in the local stack
# (fleet_actors.devstack.RAY_AUTH_MODE) but with a private token file, so nothing lands in
# ~/.ray; a private, short temp dir keeps the session's cluster apart from any other Ray on
# the machine and within Ray's unix socket path limit.
_RAY_DIR = Path(tempfile.mkdtemp(prefix="fr-test-", dir="/tmp"))
(_RAY_DIR / "auth_token").write_text(secrets.token_hex(32))
(_RAY_DIR / "auth_token").chmod(0o600)
os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the token file
os.environ.update(
    RAY_AUTH_MODE="token",
    RAY_AUTH_TOKEN_PATH=str(_RAY_DIR / "auth_token"),
    RAY_TMPDIR=str(_RAY_DIR),
    RAY_USAGE_STATS_ENABLED="0",
)

from fleet_actors.devstack import LocalStack  # noqa: E402
from fleet_actors.settings import Settings  # noqa: E402

STORY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the namespace of the session's Ray runtime, also in the `settings` fixture
RAY_NAMESPACE = f"fleet-test-{uuid.uuid4().hex[:8]}"


def unique_id(prefix: str = "story") -> str:
    """A fresh id matching [A-Za-z0-9_-]{1,64}, e.g. ``story-3f9a0c1b2d4e``."""
    value = f"{prefix}-{uuid.uuid4().hex[:12]}"
    if not STORY_ID.fullmatch(value):
        raise ValueError(f"prefix {prefix!r} gives the invalid id {value!r}")
    return value


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_RAY_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """NATS, Valkey and ArcadeDB (no Ray head), shared by the whole session."""
    with LocalStack(tmp_path_factory.mktemp("local-stack"), ray=False) as stack:
        yield stack


@pytest.fixture(scope="session")
def settings(local_stack: LocalStack) -> Settings:
    """Defaults (not the caller's FLEET_* variables) pointed at the session's stack."""
    return local_stack.settings(Settings(ray_namespace=RAY_NAMESPACE))


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[str]:
    """A local Ray cluster for the session; yields its namespace (the one in `settings`)."""
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    from fleet_actors.actors.spare_workers import ray_system_config

    if not is_token_auth_enabled():
        raise RuntimeError("ray was imported before tests/conftest.py set RAY_AUTH_MODE=token")
    ray.init(
        address="local",  # never attach to a cluster found via RAY_ADDRESS or Ray's temp dir
        num_cpus=4,
        namespace=RAY_NAMESPACE,
        logging_level="ERROR",
        log_to_driver=False,
        include_dashboard=False,
        # actors' ray.util.metrics reach the node's metrics endpoint within a second (default 10 s)
        # and workers preload the story actor's code, as in a cluster the project starts (spare workers)
        _system_config={"metrics_report_interval_ms": 1000, **ray_system_config()},
    )
    try:
        yield RAY_NAMESPACE
    finally:
        ray.shutdown()


@pytest.fixture(name="unique_id")
def unique_id_fixture() -> Callable[..., str]:
    """``unique_id("S")`` gives a fresh valid story id per call."""
    return unique_id
