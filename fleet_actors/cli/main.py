"""The `fleet-actors` command line.

Each subcommand is registered in :func:`build_parser` by a ``_register_*`` function that adds
its parser and sets ``func``: a callable taking the parsed arguments and returning the exit
code. Errors the project raises on purpose (:class:`~fleet_actors.errors.StoryError`) end
as ``error: <message>`` on stderr, without a traceback, and exit with the code their class
declares (``exit_code``: 2 for every error today).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fleet_actors.cli import (
    archive_cmd,
    check_cmd,
    events_cmd,
    gateway_cmd,
    migrate_cmd,
    projections_cmd,
    story_cmd,
)
from fleet_actors.cli.common import add_settings_arguments, run, settings_from
from fleet_actors.devstack import LocalStack
from fleet_actors.devstack.observability import scrape_targets
from fleet_actors.devstack.services import GatewayProcess, start_projector_pool
from fleet_actors.errors import BackendUnavailable, ConfigurationError, StoryError
from fleet_actors.settings import Settings
from fleet_actors.urls import redact_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-actors",
        description="Event-sourced story context on Ray actors, NATS JetStream, a graph and Valkey.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_demo(commands)
    _register_dev(commands)
    projections_cmd.register(commands)
    gateway_cmd.register(commands)
    events_cmd.register(commands)
    story_cmd.register(commands)
    archive_cmd.register(commands)
    migrate_cmd.register(commands)
    _register_rebuild(commands)
    check_cmd.register(commands)
    # Each further subcommand: a `register(commands)` that adds its parser and sets `func(args) -> int`.
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet-actors")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    from fleet_actors import console
    from fleet_actors.cli import common

    args = build_parser().parse_args(argv)
    console.JSON_OUTPUT = bool(getattr(args, "json_output", False))
    if getattr(args, "command", None) not in ("dev", "gateway"):
        # A short command reports a connection failure as its one error line: no reconnect chatter.
        logging.getLogger("fleet_actors.adapters.jetstream.connection").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except StoryError as err:
        message = err.message
        if isinstance(err, BackendUnavailable):
            message = f"{message} ({common.connection_hint()})"
        print(f"error: {message}", file=sys.stderr)
        return err.exit_code


# -- dev ------------------------------------------------------------------------------------


def _register_dev(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser("dev", help="the embedded local stack").add_subparsers(
        dest="dev_command", required=True, metavar="DEV_COMMAND"
    )
    up = dev.add_parser(
        "up",
        help="start NATS, Valkey, ArcadeDB and a Ray head; run until SIGINT/SIGTERM",
        description="Starts the local stack, writes DIR/fleet.env, prints its KEY=VALUE lines and "
        "'ready', then runs until SIGINT or SIGTERM and stops every server it started. A NATS, Valkey or "
        "ArcadeDB server that dies is restarted on its port with its data (one line on stderr); one that "
        "cannot be kept running (5 restarts within 2 minutes), or a dead Ray head, stops the whole stack "
        "with exit status 1.",
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the servers keep their data (default: FLEET_DATA_DIR or .fleet)",
    )
    up.add_argument("--no-ray", dest="ray", action="store_false", help="do not start a Ray head")
    up.add_argument(
        "--tls",
        action="store_true",
        help="serve the gateway with TLS: a self-signed certificate and key (0600) in DIR/tls, reused while "
        "valid; fleet.env tells clients to dial with TLS and trust that certificate",
    )
    up.add_argument(
        "--show-credentials",
        action="store_true",
        help="print the settings with their credentials (default: passwords as *** and URLs without user "
        "info; the usable values are in DIR/fleet.env, readable by you only)",
    )
    up.add_argument(
        "--ray-metrics",
        action="store_true",
        help="turn on Ray's Prometheus endpoint; Ray binds it to every interface and it needs no token "
        "(docs/security.md), so it is off by default",
    )
    up.add_argument("--ray-cpus", type=int, default=2, help="CPUs the Ray head offers (default: 2)")
    up.add_argument(
        "--nats-sync-interval",
        default="always",
        help="JetStream fsync interval: 'always' (default, durable) or a duration such as 2m",
    )
    up.set_defaults(func=_dev_up)

    seed = dev.add_parser(
        "seed",
        help="write generated, valid story histories straight into the event stream (benchmarks, demos)",
        description="Histories follow a documented mix (mostly subtask updates; decisions, phase changes, "
        "milestones, summaries); each story is appended in atomic batches, far faster than through the actors.",
    )
    seed.add_argument("--stories", type=int, default=100, help="how many new stories (default 100)")
    seed.add_argument("--events", type=int, default=100, help="events per story (default 100)")
    seed.add_argument("--prefix", default="seed", help="story ids are PREFIX-0000000, ... (default: seed)")
    seed.add_argument("--seed", dest="seed_value", type=int, default=0, help="random seed (default 0)")
    add_settings_arguments(seed)
    seed.set_defaults(func=_dev_seed)


def _dev_seed(args: argparse.Namespace) -> int:
    from fleet_actors.cli import common
    from fleet_actors.loadgen.seed import seed

    progress = common.ProgressLine("events")

    # Ctrl-C and SIGTERM end the seeding with a line, not a traceback (also when started in the
    # background of a script, which leaves SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = run(
            seed(settings_from(args), args.stories, args.events, prefix=args.prefix, seed_value=args.seed_value,
                 progress=progress)
        )  # fmt: skip
    except KeyboardInterrupt:
        # Each story is appended in atomic batches: the stories written so far are whole, the one
        # being written is whole or absent only if it fit one batch (1,000 events).
        progress.end()
        print(f"interrupted: the stories written so far stay in the log (prefix {args.prefix})", file=sys.stderr)
        return 130
    progress.end()
    print(f"seeded {report.stories:,} stories, {report.events:,} events in {report.seconds:.1f} s "
          f"({report.rate:,.0f} events/s)")  # fmt: skip
    return 0


# -- rebuild --------------------------------------------------------------------------------


def _register_rebuild(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from fleet_actors.jobs import rebuild

    parser = commands.add_parser(
        "rebuild",
        help="rebuild the graph from the event log with parallel replay actors (resumable)",
        description=rebuild.__doc__,
    )
    rebuild.add_arguments(parser)
    parser.set_defaults(func=_rebuild)


def _rebuild(args: argparse.Namespace) -> int:
    from fleet_actors.jobs import rebuild

    return rebuild.execute(args, settings_from(args))


# -- demo -----------------------------------------------------------------------------------


def _register_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="drive a few stories through their life cycle via the actors and show the read model",
        description="Uses the servers in FLEET_* variables or --env-file if given; otherwise starts "
        "embedded NATS, Valkey and ArcadeDB in a temporary folder and a local Ray runtime, and stops them after.",
    )
    demo.add_argument("--env-file", type=Path, metavar="FILE", help="use the servers of a running `dev up`")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from fleet_actors.demo import run_demo

    configured = args.env_file is not None or "FLEET_NATS_URL" in os.environ
    return run_demo(settings_from(args) if configured else None)


class _Shutdown(Exception):
    """Raised by the signal handler to leave start-up or the wait for a signal."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    # Stopping is bounded by SIGKILL timeouts: ignore further signals rather than abandon
    # servers half-way through it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Shutdown(signal.Signals(signum).name)


def _gateway_tls_env(directory: Path) -> dict[str, str]:
    """The gateway's self-signed pair (made once per data dir) as FLEET_* settings for it and its clients."""
    from fleet_actors.tls import ensure_self_signed

    pair = ensure_self_signed(directory)
    return {
        "FLEET_GATEWAY_TLS_CERT": str(pair.cert),
        "FLEET_GATEWAY_TLS_KEY": str(pair.key),
        # what a client needs: dial with TLS, trust the self-signed certificate (its own CA)
        "FLEET_GATEWAY_TLS": "1",
        "FLEET_GATEWAY_TLS_CA": str(pair.cert),
    }


def _usable_data_dir(data_dir: Path) -> Path:
    """The data folder, created if missing; a file or an unwritable place is a usage error."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigurationError(f"--data-dir {data_dir} is a file, not a folder", field="data_dir")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"--data-dir {data_dir} cannot be created: {error.strerror or error}", field="data_dir"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigurationError(f"--data-dir {data_dir} is not writable", field="data_dir")
    return data_dir


def _shown(key: str, value: str) -> str:
    """A setting as dev up prints it: URLs without user info, passwords, tokens and secrets as ***."""
    if value and any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")) and not key.endswith("_PATH"):
        return "***"
    return redact_url(value)


def _dev_up(args: argparse.Namespace) -> int:
    data_dir: Path = _usable_data_dir(args.data_dir or Settings.from_env().data_path)
    stack = LocalStack(
        data_dir,
        ray=args.ray,
        ray_cpus=args.ray_cpus,
        nats_sync_interval=args.nats_sync_interval,
        ray_metrics=args.ray_metrics,
    )
    # Handlers for both, installed before start-up so that a signal then still stops what has
    # started. Setting SIGINT explicitly also undoes the SIG_IGN that a background job of a
    # non-interactive shell inherits; scripts and tests should still prefer SIGTERM.
    signal.signal(signal.SIGINT, _raise_shutdown)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    gateway = None
    exit_code = 0
    try:
        started = time.monotonic()
        print(f"starting the local stack in {stack.data_dir} ...", file=sys.stderr, flush=True)
        stack.start()
        services: dict[str, str] = _gateway_tls_env(stack.data_dir / "tls") if args.tls else {}
        # A local event archive, so `archive run|status|verify` and `events export` work as the README says
        archive = stack.data_dir / "archive"
        archive.mkdir(exist_ok=True)
        services.setdefault("FLEET_ARCHIVE_URL", os.environ.get("FLEET_ARCHIVE_URL") or str(archive))
        if args.ray:
            print("starting the projectors and the gRPC gateway ...", file=sys.stderr, flush=True)
            # the admin declares the streams; the projectors and the gateway (and the story actors it
            # creates) connect to NATS as their own least-privilege roles (docs/security.md); JSON log
            # lines: the projectors' (in DATA_DIR/ray/logs) and the gateway's (DATA_DIR/logs)
            stack.declare_streams()
            start_projector_pool({**stack.env(), **stack.nats_env("projector"), "FLEET_LOG_FORMAT": "json"})
            own = {"FLEET_METRICS_ADDRESS": stack.gateway_metrics_address, "FLEET_LOG_FORMAT": "json"}
            gateway_log = stack.data_dir / "logs" / "gateway.log"
            gateway = GatewayProcess(
                {**stack.env(), **services, **stack.nats_env("gateway"), **own}, log_file=gateway_log
            ).start()
            services["FLEET_GATEWAY_ADDRESS"] = gateway.address
            services.update(scrape_targets(stack))
        env_file = stack.write_env_file(extra=services)
        for key, value in {**stack.env(), **services}.items():
            # the credentials are in fleet.env (0600), not in output unless asked for
            print(f"{key}={value if args.show_credentials else _shown(key, value)}")
        print("ready", flush=True)
        print(
            f"up in {time.monotonic() - started:.1f} s; env in {env_file}; logs in {stack.data_dir}/logs and "
            f"{stack.data_dir}/ray/logs; stop with Ctrl-C or SIGTERM",
            file=sys.stderr,
            flush=True,
        )
        try:
            # A dead server is restarted with its data; one that cannot be kept running stops it all.
            stack.supervise()
        except BackendUnavailable as error:
            print(f"dev up: {error.message}; stopping the local stack", file=sys.stderr, flush=True)
            exit_code = 1
    except _Shutdown as why:
        print(f"{why}: stopping the local stack", file=sys.stderr, flush=True)
    finally:
        if gateway is not None:
            gateway.stop()
        stack.stop()  # also removes fleet.env
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
