"""Shared CLI plumbing: settings from FLEET_* plus flags, a fleet.env file; the output helpers are
fleet_actors.console's (the rebuild job's entry point prints through them too)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fleet_actors.console import ProgressLine, print_record, print_table
from fleet_actors.errors import ConfigurationError
from fleet_actors.settings import Settings, load_env_file

T = TypeVar("T")

__all__ = ["ProgressLine", "print_record", "print_table"]  # the CLI's output, from fleet_actors.console


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="read connection settings from a fleet.env written by `dev up` (FLEET_* variables win)",
    )
    parser.add_argument("--nats-url", help="NATS server (FLEET_NATS_URL)")
    parser.add_argument("--stream", dest="stream_name", help="event stream name (FLEET_STREAM_NAME)")
    add_json_argument(parser)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    if not any("--json" in action.option_strings for action in parser._actions):
        parser.add_argument(
            "--json", dest="json_output", action="store_true", help="print tables and records as JSON (for scripts)"
        )


#: the fleet.env the settings came from (None: FLEET_* variables and defaults only)
LOADED_ENV_FILE: Path | None = None


def connection_hint() -> str:
    """What to check when a server cannot be reached, given where the settings came from."""
    if LOADED_ENV_FILE is not None:
        return f"is the `fleet-actors dev up` that wrote {LOADED_ENV_FILE} still running?"
    if any(key.startswith("FLEET_") and key.endswith(("_URL", "_URI")) for key in os.environ):
        return "check the FLEET_* server settings in your environment; is that stack running?"
    data_dir = Settings.from_env().data_dir
    return (
        f"no fleet.env loaded: is `fleet-actors dev up` running? load its settings with "
        f"`set -a; . {data_dir}/fleet.env; set +a` or pass --env-file"
    )


def settings_from(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    env_file = getattr(args, "env_file", None)
    if env_file is None and (Path(Settings.from_env().data_dir) / "fleet.env").exists():
        env_file = Path(Settings.from_env().data_dir) / "fleet.env"
    global LOADED_ENV_FILE
    if env_file is not None:
        if not Path(env_file).is_file():
            raise ConfigurationError(
                f"--env-file {env_file}: no such file (`fleet-actors dev up` writes DIR/fleet.env)", field="env_file"
            )
        LOADED_ENV_FILE = Path(env_file)
        env = {**load_env_file(env_file), **env}
        if "RAY_ADDRESS" not in os.environ and "RAY_ADDRESS" in env:
            os.environ["RAY_ADDRESS"] = env["RAY_ADDRESS"]
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            if key in env:
                os.environ.setdefault(key, env[key])
    return Settings.from_env(
        env, nats_url=getattr(args, "nats_url", None), stream_name=getattr(args, "stream_name", None)
    )


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)
