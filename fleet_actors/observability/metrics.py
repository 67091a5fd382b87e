"""Every Prometheus metric of fleet-actors, in one place (docs/operations.md lists them).

Where a metric goes depends on the process that records it, chosen once per process on first use:

- inside a Ray actor (story actors, the registry, projectors, replay actors, the read-model actor)
  through ``ray.util.metrics``, exported on each Ray node's metrics endpoint (which a Ray cluster's
  operators already scrape); Ray prefixes the names with ``ray_`` and adds its own labels
  (``WorkerId``, ``NodeAddress``, ...);
- anywhere else (the gateway, ``FleetClient`` in a driver, long-running CLI commands and jobs)
  through ``prometheus_client``'s default registry, served by :func:`serve_metrics` on
  ``FLEET_METRICS_ADDRESS``.

Names follow Prometheus conventions: the unit in the name (``_seconds``, ``_events``), counters end
in ``_total``, and labels take a small, fixed set of values (a command type, an outcome, an error
code, a partition number, a projector name): never a story, command or event id.

The hot path pays one method call and, for a new combination of label values only, one lookup:
metric objects and their labelled children are created once and cached.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fleet_actors.errors import ConcurrencyConflict, ConfigurationError, Retryable, StoryError

if TYPE_CHECKING:
    from fleet_actors.settings import Settings

#: request latencies, seconds (a command takes ~1 ms on a quiet stack, seconds during an outage)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: activations replay a snapshot and the events after it: tens of milliseconds to seconds
ACTIVATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: events per projector batch
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

#: outcomes of a command (``fleet_commands_total``, the latency histograms' ``outcome`` label)
ACCEPTED, REJECTED, CONFLICT, DUPLICATE, UNAVAILABLE = "accepted", "rejected", "conflict", "duplicate", "unavailable"


def command_outcome(error: BaseException | None, duplicate: bool = False) -> tuple[str, str]:
    """``(outcome, reason)`` of a command: the reason is the error's stable code for rejections
    (``FAILED_PRECONDITION``, ``INVALID_ARGUMENT``, ``NOT_FOUND``, ...), empty otherwise."""
    if error is None:
        return (DUPLICATE if duplicate else ACCEPTED), ""
    if isinstance(error, ConcurrencyConflict):
        return CONFLICT, error.code
    if isinstance(error, Retryable):
        return UNAVAILABLE, error.code
    if isinstance(error, StoryError):
        return REJECTED, error.code
    return UNAVAILABLE, "INTERNAL"


@functools.cache
def _use_ray() -> bool:
    """Inside a Ray actor: record through ray.util.metrics (the node's endpoint)."""
    try:
        import ray

        return bool(ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None)
    except Exception:
        return False


class _Family:
    """One metric with fixed label names; ``child(*values)`` is the cached recorder for some values."""

    def __init__(
        self, kind: str, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> None:
        self.kind, self.name, self.labels = kind, name, tuple(labels)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        if _use_ray():
            from ray.util import metrics as ray_metrics

            if kind == "counter":
                self._ray: Any = ray_metrics.Counter(name, doc, tag_keys=self.labels)
            elif kind == "gauge":
                self._ray = ray_metrics.Gauge(name, doc, tag_keys=self.labels)
            else:
                self._ray = ray_metrics.Histogram(name, doc, boundaries=list(buckets), tag_keys=self.labels)
            self._prom: Any = None
        else:
            import prometheus_client

            self._ray = None
            if kind == "counter":
                self._prom = prometheus_client.Counter(name, doc, self.labels)
            elif kind == "gauge":
                self._prom = prometheus_client.Gauge(name, doc, self.labels)
            else:
                self._prom = prometheus_client.Histogram(name, doc, self.labels, buckets=list(buckets))

    def child(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            with self._lock:
                child = self._children.get(values)
                if child is None:
                    child = self._make_child(values)
                    self._children[values] = child
        return child

    def _make_child(self, values: tuple[str, ...]) -> Any:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
        if self._ray is not None:
            return _RayChild(self._ray, dict(zip(self.labels, values, strict=True)) or None)
        return self._prom.labels(*values) if self.labels else self._prom

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self.child(*values).inc(amount)

    def set(self, value: float, *values: str) -> None:
        self.child(*values).set(value)

    def observe(self, value: float, *values: str) -> None:
        self.child(*values).observe(value)


class _NullChild:
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


_NULL_CHILD = _NullChild()


class _NullFamily(_Family):
    """A metric that records nothing (FLEET_METRICS_ENABLED=0)."""

    def __init__(
        self, kind: str, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> None:
        self.kind, self.name, self.labels = kind, name, tuple(labels)

    def child(self, *values: str) -> Any:
        return _NULL_CHILD


class _RayChild:
    """The prometheus_client child interface over a ray.util.metrics object and fixed tags."""

    __slots__ = ("_metric", "_tags")

    def __init__(self, metric: Any, tags: dict[str, str] | None) -> None:
        self._metric, self._tags = metric, tags

    def inc(self, amount: float = 1.0) -> None:
        if amount > 0:  # Ray refuses an increment of 0 (prometheus_client takes it)
            self._metric.inc(amount, self._tags)

    def set(self, value: float) -> None:
        self._metric.set(value, self._tags)

    def observe(self, value: float) -> None:
        self._metric.observe(value, self._tags)


class FleetMetrics:
    """The metric objects of one process (see :func:`metrics`)."""

    def __init__(self, enabled: bool = True) -> None:
        c, g, h = "counter", "gauge", "histogram"
        make = _Family if enabled else _NullFamily
        # --- commands: story actors (and the client's view of them) ---
        self.commands = make(
            c,
            "fleet_commands_total",
            "Commands handled by story actors, by command type, outcome (accepted, duplicate, rejected, conflict, "
            "unavailable) and reason (the error code; empty when accepted)",
            ("command", "outcome", "reason"),
        )
        self.command_duration = make(
            h,
            "fleet_command_duration_seconds",
            "Time a story actor spends on a command (load if needed, decide, append), by command type and outcome",
            ("command", "outcome"),
            LATENCY_BUCKETS,
        )
        self.client_command_duration = make(
            h,
            "fleet_client_command_duration_seconds",
            "Command latency as FleetClient sees it (Ray round trip and retries included), by command type and outcome",
            ("command", "outcome"),
            LATENCY_BUCKETS,
        )
        self.append_duration = make(
            h,
            "fleet_append_duration_seconds",
            "Time to append one command's events to the JetStream log, by outcome (ok, conflict, error)",
            ("outcome",),
            LATENCY_BUCKETS,
        )
        # --- story actor lifecycle ---
        self.activations = make(c, "fleet_story_activations_total", "Story actors activated (state loaded)")
        self.activation_duration = make(
            h,
            "fleet_story_activation_duration_seconds",
            "Time to activate a story actor: open connections, load the snapshot, replay the events after it",
            (),
            ACTIVATION_BUCKETS,
        )
        self.passivations = make(
            c,
            "fleet_story_passivations_total",
            "Story actors passivated, by reason (idle: unused for FLEET_ACTOR_IDLE_SECONDS; evicted: beyond the cap)",
            ("reason",),
        )
        self.live_stories = make(g, "fleet_live_stories", "Story actors live, as the story registry counts them")
        self.live_stories_cap = make(g, "fleet_live_stories_cap", "FLEET_MAX_LIVE_STORIES: the cap on live actors")
        # --- projectors ---
        self.projector_up = make(
            g, "fleet_projector_up", "1 while the projector's loop runs, 0 once it stopped or failed", ("projector",)
        )
        self.projector_heartbeat = make(
            g,
            "fleet_projector_heartbeat_timestamp_seconds",
            "Unix time of the projector loop's last turn (a batch, an idle poll or a pause check)",
            ("projector",),
        )
        self.projector_paused = make(
            g,
            "fleet_projector_paused",
            "1 while the projector stays off the graph for a rebuild, with the rebuild's job id; 0 otherwise",
            ("projector", "rebuild"),
        )
        self.lag_events = make(
            g,
            "fleet_projection_lag_events",
            "Events stored but not yet delivered to the projector, per partition (the consumer's pending count)",
            ("partition",),
        )
        self.lag_seconds = make(
            g,
            "fleet_projection_lag_seconds",
            "Age of the last event a partition's projector committed, at commit time (0 when it is idle)",
            ("partition",),
        )
        self.batch_size = make(
            h, "fleet_projection_batch_events", "Events per projector batch", ("projector",), BATCH_BUCKETS
        )
        self.apply_duration = make(
            h,
            "fleet_projection_apply_duration_seconds",
            "Time to apply one batch to the graph and the context documents and acknowledge it",
            ("projector",),
            LATENCY_BUCKETS,
        )
        self.projected_events = make(
            c,
            "fleet_projection_events_total",
            "Events handled by projectors, by result (applied, duplicate: skipped by the version guard, "
            "healed: read back from the log, held: behind a parked event)",
            ("projector", "result"),
        )
        self.redeliveries = make(
            c,
            "fleet_projection_redeliveries_total",
            "Events JetStream delivered again (not acknowledged in time, or handed back)",
            ("projector",),
        )
        self.parked_total = make(
            c, "fleet_events_parked_total", "Events parked in the dead-letter stream", ("projector",)
        )
        self.parked = make(
            g,
            "fleet_parked_events",
            "Events parked now (one per held story) as a projector last saw the dead-letter index",
            ("projector",),
        )
        self.projection_errors = make(
            c, "fleet_projection_errors_total", "Errors a projector recorded (and retried)", ("projector",)
        )
        # --- rebuilds ---
        self.rebuild_events = make(c, "fleet_rebuild_events_total", "Events replayed by rebuild workers", ("worker",))
        self.rebuild_progress = make(
            g, "fleet_rebuild_progress_ratio", "Share of a running rebuild's events replayed (0..1)", ()
        )
        # --- gateway ---
        self.rpcs = make(
            c, "fleet_gateway_rpcs_total", "Gateway RPCs finished, by method and gRPC status code", ("method", "code")
        )
        self.rpc_duration = make(
            h,
            "fleet_gateway_rpc_duration_seconds",
            "Gateway RPC latency (streams: their whole life), by method and gRPC status code",
            ("method", "code"),
            LATENCY_BUCKETS,
        )
        self.gateway_serving = make(
            g, "fleet_gateway_serving", "1 while the gateway's ContextService reports SERVING, else 0"
        )
        self.backend_up = make(
            g, "fleet_gateway_backend_up", "1 while the gateway reaches a backend, 0 while it does not", ("backend",)
        )
        self.fresh_read_waits = make(
            h,
            "fleet_fresh_read_wait_seconds",
            "Time spent waiting for the read models to reach a version before answering, by outcome (ok, timeout)",
            ("outcome",),
            LATENCY_BUCKETS,
        )
        # --- the process itself ---
        self.gc_pauses = make(
            h,
            "fleet_gc_pause_seconds",
            "Time the cyclic garbage collector held the process (every thread waits), by generation (2: a full "
            "collection, as long as the objects the process holds are many)",
            ("generation",),
            LATENCY_BUCKETS,
        )
        # --- connections ---
        self.nats_connection_events = make(
            c,
            "fleet_nats_connection_events_total",
            "NATS connection state changes (disconnected, reconnected, error)",
            ("event",),
        )


_active: FleetMetrics | None = None
_made: dict[bool, FleetMetrics] = {}


def metrics() -> FleetMetrics:
    """This process's metric objects, created on first use."""
    return _active or set_enabled(True)


def set_enabled(enabled: bool) -> FleetMetrics:
    """Record metrics in this process from now on, or not (benchmarks measure the difference)."""
    global _active
    with _made_lock:
        if enabled not in _made:
            _made[enabled] = FleetMetrics(enabled)
        _active = _made[enabled]
    return _active


def configure(settings: Settings) -> None:
    """Follow ``FLEET_METRICS_ENABLED`` (actors call this before recording anything)."""
    set_enabled(settings.metrics_enabled)


_made_lock = threading.Lock()


_servers: dict[str, Any] = {}


def serve_metrics(address: str) -> int | None:
    """Serve prometheus_client's default registry on ``host:port`` (``/metrics``); idempotent.

    Returns the bound port (``port 0`` picks a free one), None when ``address`` is empty.
    """
    if not address:
        return None
    if address in _servers:
        return int(_servers[address].server_port)
    import prometheus_client

    host, _, port = address.rpartition(":")
    try:
        server, _thread = prometheus_client.start_http_server(int(port), addr=host or "127.0.0.1")
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot serve metrics on {address}: {error}") from None
    metrics()  # the families exist from the start, so a scrape lists them before any traffic
    _servers[address] = server
    return int(server.server_port)


def serve_process_metrics(settings: Settings) -> int | None:
    """A long-running process outside Ray (the gateway, ``archive run --every``, ``projections run``,
    a rebuild's driver) serves its metrics on ``FLEET_METRICS_ADDRESS`` when it is set, and says where."""
    port = serve_metrics(settings.metrics_address)
    if port is not None:
        watch_collector_pauses()
        host = settings.metrics_address.rpartition(":")[0] or "127.0.0.1"
        logging.getLogger("fleet_actors.metrics").info("metrics on http://%s:%s/metrics", host, port)
    return port


_collector_watched = False


def watch_collector_pauses() -> None:
    """Observe every run of the cyclic garbage collector in this process as ``fleet_gc_pause_seconds``
    (once per process). A reader that holds many decoded states (the gateway's live states and
    snapshots) pays for them in every full collection, on whichever request happens to be running:
    this is how an operator tells such a pause from a slow backend."""
    global _collector_watched
    if _collector_watched:
        return
    _collector_watched = True
    started = [0.0]
    # Made now, not in the callback: a collection can start inside any allocation, also one made
    # while this thread holds the lock that making a child takes, which the callback would then wait
    # for forever. Observing a made child only adds floats under its lock (floats start no collection).
    by_generation = tuple(metrics().gc_pauses.child(str(generation)) for generation in range(3))

    def on_collection(phase: str, info: dict[str, int]) -> None:
        # The collector is not re-entrant and runs under the GIL: a start and its stop pair up.
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started[0])

    gc.callbacks.append(on_collection)


def stop_metrics_servers() -> None:
    for address in list(_servers):
        server = _servers.pop(address)
        server.shutdown()
        server.server_close()
