"""Shared CLI plumbing: settings from FLEET_* plus flags, a fleet.env file, tables and progress (rich)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

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
    """Rows under upper-case column headers (rich's table, plain text when not on a terminal, never
    wrapped or cut), or a JSON list of the rows (every field) with --json."""
    if JSON_OUTPUT:
        print(json.dumps(list(rows), default=str, indent=2))
        return
    if not rows:
        print("(none)")
        return
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold", show_edge=False)
    for column in columns:
        table.add_column(column.upper(), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(escape(str(row.get(c, ""))) for c in columns))
    console = Console(highlight=False, width=None if os.isatty(1) else 100_000)  # never wrapped off a terminal
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


class ProgressLine:
    """The one progress display of the CLI: on a terminal rich's progress bar (done/total, rate, ETA);
    elsewhere (logs, CI) a line ``done/total unit  rate/s  ETA`` every few seconds. Call it with
    ``(done, total[, seconds])``; ``end()`` closes it."""

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
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int, seconds: float | None = None) -> None:
        now = self._clock()
        if self._tty:
            if self._bar is None:
                self._bar = Progress(
                    TextColumn(f"  {{task.completed:,.0f}}/{{task.total:,.0f}} {self.unit}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    TimeRemainingColumn(),
                    console=Console(file=self._stream),
                    transient=False,
                )
                self._bar.start()
                self._task = self._bar.add_task(self.unit, total=total)
            assert self._task is not None
            self._bar.update(self._task, completed=done, total=total)
            self._drawn = True
            return
        if now - self._last < self.every and done < total:
            return
        self._last = now
        elapsed = seconds if seconds is not None else now - self._started
        rate = done / elapsed if elapsed else 0.0
        eta = f"  ETA {(total - done) / rate:,.0f} s" if rate and total > done else ""
        print(f"  {done:,}/{total:,} {self.unit}  {rate:,.0f}/s{eta}", file=self._stream, flush=True)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._drawn = False
