"""The gateway's ``grpc.aio`` server: the ContextService plus health checking, reflection and auth.

:func:`serve` starts it inside a running event loop and returns a :class:`RunningGateway`
(tests bind ``127.0.0.1:0`` and read the port from it); :func:`run_gateway` is the blocking
runner of ``fleet-actors gateway``, which stops gracefully on SIGINT or SIGTERM: health turns
NOT_SERVING, watch streams end, in-flight calls get ``grace`` seconds to finish. While it runs, the
ContextService's health follows the backends (see :meth:`RunningGateway.watch_backends`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fleet_actors.client import connect_ray
from fleet_actors.codec.collector import freeze_long_lived
from fleet_actors.errors import ConfigurationError
from fleet_actors.gateway.observed import ObservedInterceptor
from fleet_actors.gateway.scope_policy import ScopePolicy
from fleet_actors.gateway.servicer import Backends, ContextServicer
from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import metrics, serve_process_metrics
from fleet_actors.proto import context_service_pb2, context_service_pb2_grpc
from fleet_actors.settings import Settings
from fleet_actors.tls import server_credentials

SERVICE_NAME = context_service_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_GRACE = 10.0
#: seconds between backend checks; the ContextService's readiness follows them
HEALTH_INTERVAL = 5.0

log = logging.getLogger(__name__)
#: probes and tooling (grpcurl) must work without the token
_UNAUTHENTICATED_PREFIXES = (
    f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every call except health and reflection."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's own handler if the call may proceed, else one that answers UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if not scheme:
            return _denied(handler, "missing 'authorization: Bearer <token>' metadata")
        # Constant-time comparison: the time taken must not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            return _denied(handler, "wrong bearer token")
        return handler


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class RunningGateway:
    """A started gateway. ``port`` is the bound port (useful after binding port 0)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        host: str,
        port: int,
        servicer: ContextServicer,
        health: health.aio.HealthServicer,
        backends: Backends,
        *,
        tls: str = "plaintext",
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        #: "plaintext", "TLS" or "mutual TLS"
        self.tls = tls
        #: the plaintext health-only listener (``gateway_health_address``), if any
        self.health_server = health_server
        self.health_port = health_port
        self._servicer = servicer
        self._health = health
        self._backends = backends
        self._stopped = False
        self._watch: asyncio.Task[None] | None = None

    def watch_backends(self, interval: float) -> None:
        """Keep the ContextService's health (the readiness probe) NOT_SERVING while a backend is
        unreachable. The server's overall health (the liveness probe) is left alone: restarting the
        gateway cures no outage of a server behind it."""
        self._watch = asyncio.get_running_loop().create_task(self._watch_backends(interval))

    async def _watch_backends(self, interval: float) -> None:
        reported: list[str] = []
        while True:
            await asyncio.sleep(interval)
            try:
                unreachable = await self._backends.unreachable(timeout=min(interval, 2.0))
            except Exception:  # a bug here must not freeze the readiness it reports
                log.exception("checking the backends failed")
                unreachable = ["(check failed)"]
            if unreachable == reported:
                continue
            _report_backends(unreachable, reported)
            if unreachable:
                log.warning("not ready: %s unreachable", ", ".join(unreachable))
                await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
            else:
                log.warning("ready again: every backend answers")
                await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            reported = unreachable

    @property
    def address(self) -> str:
        """``host:port`` as clients should dial it."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop gracefully: NOT_SERVING, end watch streams, let in-flight calls finish within ``grace``; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()  # it must not report SERVING again
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        metrics().gateway_serving.set(0)
        await self._health.enter_graceful_shutdown()
        self._servicer.close()
        try:
            if self.health_server is not None:
                await self.health_server.stop(grace)
            await self.server.stop(grace)
        finally:
            await self._backends.close()

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped."""
        await self.server.wait_for_termination()


async def serve(
    settings: Settings,
    *,
    address: str | None = None,
    token: str | None = None,
    policy: ScopePolicy | None = None,
    health_interval: float = HEALTH_INTERVAL,
) -> RunningGateway:
    """Connect the backends and start serving.

    Args:
        settings: connections; also the defaults for the address (``gateway_address``) and the
            token (``gateway_token``).
        address: ``host:port`` to listen on; port 0 picks a free port.
        token: require this bearer token (empty: no authentication).
        policy: the scope policy (default: :meth:`ScopePolicy.load` of ``settings.scope_policy_file``).
        health_interval: seconds between the backend checks behind the ContextService's health.

    TLS comes from the settings: ``gateway_tls_cert`` and ``gateway_tls_key`` (and, for mutual TLS,
    ``gateway_tls_client_ca``); ``gateway_health_address`` adds a plaintext listener that serves
    only the health service.

    Returns:
        The running gateway; call :meth:`RunningGateway.stop` to shut it down.

    Raises:
        ConfigurationError: the address cannot be bound, a TLS file is missing or invalid, or the
            policy file is invalid.
        BackendUnavailable: a backend cannot be reached.
    """
    address = address or settings.gateway_address
    token = settings.gateway_token if token is None else token
    tracing.configure(settings)
    credentials = server_credentials(settings)  # before connecting anything: a bad file fails at once
    tls = "plaintext" if credentials is None else "mutual TLS" if settings.gateway_tls_client_ca else "TLS"
    policy = policy or ScopePolicy.load(settings.scope_policy_file or None)
    host, _, _ = address.rpartition(":")
    connect_ray(settings)
    backends = await Backends.connect(settings)
    try:
        servicer = ContextServicer(backends, policy, settings)
        health_servicer = health.aio.HealthServicer()
        server = grpc.aio.server(
            # metrics and traces first: they see the answer of the token check too
            interceptors=[ObservedInterceptor(), *([BearerTokenInterceptor(token)] if token else [])],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # gRPC shares ports by default: a second gateway on the same address must fail, not split traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        context_service_pb2_grpc.add_ContextServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        port = _listen(server, address, credentials)
        health_server = health_port = None
        if settings.gateway_health_address:
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_port = _listen(health_server, settings.gateway_health_address, None)
        await server.start()
        if health_server is not None:
            await health_server.start()
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        metrics().gateway_serving.set(1)
    except BaseException:
        await backends.close()
        raise
    running = RunningGateway(
        server,
        host,
        port,
        servicer,
        health_servicer,
        backends,
        tls=tls,
        health_server=health_server,
        health_port=health_port,
    )
    running.watch_backends(health_interval)
    return running


def _report_backends(unreachable: list[str], reported: list[str]) -> None:
    """fleet_gateway_serving and fleet_gateway_backend_up{backend} after a change of the backends' state."""
    m = metrics()
    m.gateway_serving.set(0 if unreachable else 1)
    for backend in {*unreachable, *reported}:
        m.backend_up.set(0 if backend in unreachable else 1, _backend_label(backend))


def _backend_label(name: str) -> str:
    return name.lower().replace(" ", "_").strip("()")


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise ConfigurationError(f"the gateway cannot listen on {address}: {error}") from None


@contextlib.contextmanager
def gateway_in_thread(settings: Settings, address: str = "127.0.0.1:0") -> Iterator[RunningGateway]:
    """Serve on a background thread with its own event loop, for blocking code (the demo, benchmarks)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["gateway"] = loop.run_until_complete(serve(settings, address=address))
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error
        started.set()
        if "gateway" in outcome:
            loop.run_forever()

    thread = threading.Thread(target=serve_forever, name="fleet-gateway", daemon=True)
    thread.start()
    started.wait()
    if "error" in outcome:
        loop.close()
        raise outcome["error"]
    gateway: RunningGateway = outcome["gateway"]
    try:
        yield gateway
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def run_gateway(
    settings: Settings,
    *,
    grace: float = DEFAULT_GRACE,
    ready: Callable[[RunningGateway], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully (blocking; for the CLI).

    Args:
        settings: as for :func:`serve`, which takes the address and token from it.
        grace: seconds in-flight calls get to finish once a signal arrives.
        ready: called once the gateway listens (e.g. to print its address).
    """
    asyncio.run(_run(settings, grace, ready))


async def _run(settings: Settings, grace: float, ready: Callable[[RunningGateway], None] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # ray.init installs a SIGTERM handler that exits on the spot: join Ray first, then take the
    # signals over. Installing handlers also undoes the SIG_IGN for SIGINT that background jobs inherit.
    connect_ray(settings)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    serve_process_metrics(settings)
    gateway = await serve(settings)
    # Its imports and connections live as long as the process: out of every full collection's walk
    # from now on (half of each full collection's pause in a gateway, docs/benchmarks.md).
    freeze_long_lived()
    try:
        if ready is not None:
            ready(gateway)
        await stop.wait()
    finally:
        await gateway.stop(grace)
