"""`fleet-actors gateway`: serve the agents' gRPC ContextService until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys

from fleet_actors.cli.common import add_settings_arguments, settings_from
from fleet_actors.observability.logs import configure_logging


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``gateway`` subcommand to the CLI's subparsers."""
    gateway = commands.add_parser(
        "gateway",
        help="serve fleet.context.v1.ContextService over gRPC; run until SIGINT/SIGTERM",
        description="Connects to Ray, NATS, Valkey and the graph, then serves the agents' gRPC API. Prints "
        "FLEET_GATEWAY_ADDRESS=HOST:PORT and 'ready' once listening; on SIGINT or SIGTERM it reports "
        "NOT_SERVING, lets in-flight calls finish for --grace seconds and exits. TLS: FLEET_GATEWAY_TLS_CERT and "
        "FLEET_GATEWAY_TLS_KEY (FLEET_GATEWAY_TLS_CLIENT_CA requires client certificates).",
    )
    add_settings_arguments(gateway)
    gateway.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="where to listen (FLEET_GATEWAY_ADDRESS, default 127.0.0.1:50051; port 0 picks a free one)",
    )
    gateway.add_argument(
        "--token",
        help="require 'authorization: Bearer TOKEN' on every call but health and reflection "
        "(FLEET_GATEWAY_TOKEN, which keeps the token out of the process list; empty: no authentication)",
    )
    gateway.add_argument(
        "--grace", type=float, default=10.0, help="seconds in-flight calls get to finish on shutdown (default 10)"
    )
    gateway.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="SERVICE",
        help="do not serve: ask the gateway at --address / FLEET_GATEWAY_ADDRESS for its health (of SERVICE, "
        "default the server), over TLS when FLEET_GATEWAY_TLS / FLEET_GATEWAY_TLS_CA say so; print the status, "
        "exit 0 if SERVING, 1 if not, 2 if it does not answer",
    )
    gateway.set_defaults(func=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.address:
        settings = settings.replace(gateway_address=args.address)
    if args.check is not None:
        from fleet_actors.tls import gateway_health

        status = gateway_health(settings, service=args.check)
        print(status)
        return 0 if status == "SERVING" else 1
    _refuse_an_address_in_use(settings.gateway_address, given=bool(args.address))
    from fleet_actors.gateway import RunningGateway, run_gateway  # imports Ray: not for --check

    if args.token is not None:
        settings = settings.replace(gateway_token=args.token)
    # Unexpected errors are logged with a reference that callers see in their status message; no log
    # line (message, arguments or traceback) carries a URL's credentials. FLEET_LOG_FORMAT=json: JSON lines.
    configure_logging(settings.log_format)

    def ready(gateway: RunningGateway) -> None:
        print(f"FLEET_GATEWAY_ADDRESS={gateway.address}")
        print("ready", flush=True)
        auth = "bearer token required" if settings.gateway_token else "no authentication"
        health = f"; plaintext health on port {gateway.health_port}" if gateway.health_port else ""
        print(
            f"gateway listening on {gateway.address} ({gateway.tls}, {auth}{health}); stop with SIGTERM",
            file=sys.stderr,
            flush=True,
        )

    run_gateway(settings, grace=args.grace, ready=ready)
    return 0


def _refuse_an_address_in_use(address: str, *, given: bool) -> None:
    """One clear line instead of a bind failure, typically fleet.env's own gateway (``dev up``)."""
    import socket

    from fleet_actors.errors import ConfigurationError

    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0).close()
    except OSError:
        return  # nothing answers there: free to bind
    where = "--address" if given else "FLEET_GATEWAY_ADDRESS"
    raise ConfigurationError(
        f"{where} {address} is in use: a gateway already serves there (the `dev up` of fleet.env starts one; "
        "`fleet-actors gateway --check` asks it). To run another one pass --address HOST:PORT (port 0: any free port)",
        field="gateway_address",
    )
