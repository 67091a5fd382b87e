"""Shared CLI plumbing: settings from FLEET_* plus flags, a fleet.env file, and table printing."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fleet_actors.errors import ConfigurationError
from fleet_actors.settings import Settings, load_env_file

T = TypeVar("T")


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


#: set by the CLI's main from --json: tables and records are printed as JSON
JSON_OUTPUT = False
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


def print_record(record: dict[str, Any]) -> None:
    """One record: ``key  value`` lines, or a JSON object with --json."""
    if JSON_OUTPUT:
        print(json.dumps(record, default=str, indent=2))
        return
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        print(f"{key.ljust(width)}  {value}")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows under upper-case column headers, or a JSON list of the rows (every field) with --json."""
    if JSON_OUTPUT:
        print(json.dumps(list(rows), default=str, indent=2))
        return
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


class ProgressLine:
    """The one progress display of the CLI: ``done/total unit  rate/s  ETA`` on stderr, redrawn in
    place on a terminal, a line every few seconds otherwise (logs, CI). Call it with
    ``(done, total[, seconds])``; ``end()`` closes the line."""

    def __init__(self, unit: str, *, every: float = 5.0) -> None:
        import sys
        import time

        self.unit, self.every = unit, every
        self._stream = sys.stderr
        self._tty = self._stream.isatty()
        self._clock = time.monotonic
        self._started = self._clock()
        self._last = float("-inf")
        self._drawn = False

    def __call__(self, done: int, total: int, seconds: float | None = None) -> None:
        now = self._clock()
        if not self._tty and now - self._last < self.every and done < total:
            return
        self._last = now
        elapsed = seconds if seconds is not None else now - self._started
        rate = done / elapsed if elapsed else 0.0
        eta = f"  ETA {(total - done) / rate:,.0f} s" if rate and total > done else ""
        line = f"  {done:,}/{total:,} {self.unit}  {rate:,.0f}/s{eta}"
        if self._tty:
            print(f"\r{line}\x1b[K", end="", file=self._stream, flush=True)
            self._drawn = True
        else:
            print(line, file=self._stream, flush=True)

    def end(self) -> None:
        if self._drawn:
            print(file=self._stream, flush=True)
            self._drawn = False
