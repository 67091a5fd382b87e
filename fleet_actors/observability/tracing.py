"""OpenTelemetry traces of a command, from the caller to the read models. Off unless configured.

``FLEET_TRACES_EXPORTER`` turns them on in every process that gets the settings (the gateway, the
CLI, story actors, projectors): ``console`` prints spans to stderr, ``otlp`` sends them to
``OTEL_EXPORTER_OTLP_ENDPOINT`` (needs ``opentelemetry-exporter-otlp-proto-http``). One trace:

    fleet.command (FleetClient, or the gateway's RPC span above it)
      story.execute (the story actor: load if needed, decide)
        jetstream.append (the events' NATS headers carry the trace context)
          projection.apply (the projector that applied them; attribute fleet.lag_seconds)
            graph.write, documents.write

The context crosses Ray in :class:`~fleet_actors.application.messages.CommandRequest` (``trace``)
and NATS in each event's headers (W3C ``traceparent``). With tracing off every helper here returns
at its first line: no span, no header, no allocation.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fleet_actors.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from fleet_actors.settings import Settings

#: the exporters FLEET_TRACES_EXPORTER accepts ("" or "none": off)
EXPORTERS = ("", "none", "console", "otlp", "discard")
TRACEPARENT = "traceparent"

_lock = threading.Lock()
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_NULL = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def configure(settings: Settings) -> None:
    """Turn tracing on in this process if the settings name an exporter (idempotent)."""
    if _tracer is not None or settings.traces_exporter in ("", "none"):
        return
    if settings.traces_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter: SpanExporter = ConsoleSpanExporter(out=sys.stderr)
    elif settings.traces_exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigurationError(
                "FLEET_TRACES_EXPORTER=otlp needs the opentelemetry-exporter-otlp-proto-http package"
            ) from None
        exporter = OTLPSpanExporter()
    elif settings.traces_exporter == "discard":
        exporter = _discarding_exporter()
    else:
        raise ConfigurationError(f"FLEET_TRACES_EXPORTER={settings.traces_exporter!r} is not one of {EXPORTERS}")
    use_exporter(exporter, batch=True)


def _discarding_exporter() -> SpanExporter:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        """Every span made and batched, none sent: what tracing costs the processes themselves."""

        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Discard()


def use_exporter(exporter: SpanExporter, *, batch: bool = False) -> None:
    """Trace into ``exporter`` from now on (tests pass an InMemorySpanExporter; ``batch=False`` exports
    each span as it ends)."""
    global _tracer, _provider, _propagator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    with _lock:
        provider = TracerProvider(resource=Resource.create({"service.name": "fleet-actors"}))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        _provider, _propagator = provider, TraceContextTextMapPropagator()
        _tracer = provider.get_tracer("fleet_actors")


def disable() -> None:
    """Tracing off again (tests); spans not yet exported are flushed first."""
    global _tracer, _provider
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _tracer = _provider = None


def flush() -> None:
    if _provider is not None:
        _provider.force_flush()


def inject() -> dict[str, str] | None:
    """The current trace context as W3C headers (None with tracing off or outside a span)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier or None


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to a NATS message's headers (nothing with tracing off)."""
    if _tracer is not None:
        _propagator.inject(headers)


def _extract(carrier: Mapping[str, str] | None) -> Any:
    return _propagator.extract(carrier) if carrier else None


@contextlib.contextmanager
def _span(name: str, parent: Any = None, kind: str = "INTERNAL", **attributes: Any) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind[kind], attributes=attributes) as span:
        try:
            yield span
        except BaseException as error:
            code = getattr(error, "code", "")
            span.set_attribute("fleet.error_code", code or type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            raise


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (a no-op context with tracing off)."""
    if _tracer is None:
        return _NULL
    return _span(name, **attributes)


def client_span(story_id: str, command: str) -> contextlib.AbstractContextManager[Any]:
    """FleetClient's span around one command (its context goes into the request)."""
    if _tracer is None:
        return _NULL
    return _span("fleet.command", kind="CLIENT", **{"fleet.story_id": story_id, "fleet.command": command})


class TracedCommand(Protocol):
    """What a command span reads of a request (application.messages.CommandRequest)."""

    @property
    def story_id(self) -> str: ...
    @property
    def command_id(self) -> str: ...
    @property
    def command(self) -> object: ...
    @property
    def trace(self) -> Mapping[str, str] | None: ...


def command_span(request: TracedCommand) -> contextlib.AbstractContextManager[Any]:
    """The story actor's span of one command, continuing the caller's trace if it sent one."""
    if _tracer is None:
        return _NULL
    return _span(
        "story.execute",
        _extract(request.trace),
        kind="SERVER",
        **{
            "fleet.story_id": request.story_id,
            "fleet.command_id": request.command_id,
            "fleet.command": type(request.command).__name__,
        },
    )


def rpc_span(method: str, metadata: Sequence[tuple[str, Any]] | None) -> contextlib.AbstractContextManager[Any]:
    """The gateway's span of one RPC, continuing a ``traceparent`` the caller sent as metadata."""
    if _tracer is None:
        return _NULL
    carrier = {k: v for k, v in (metadata or ()) if k in (TRACEPARENT, "tracestate") and isinstance(v, str)}
    return _span("grpc " + method, _extract(carrier), kind="SERVER", **{"rpc.method": method})


def applied(
    traced: Sequence[tuple[Mapping[str, str], str, int, float]],
    started_ns: int,
    writes: Mapping[str, tuple[int, int]],
    projector: str,
) -> None:
    """Spans of a committed projector batch, one per trace found in the events' headers.

    ``traced``: (headers, story_id, events, lag_seconds) per traced story of the batch; the batch's
    start and its targets' writes, name -> (start, end) in ``time.time_ns()`` (e.g. ``graph.write``).
    """
    if _tracer is None or not traced:
        return
    from opentelemetry.trace import SpanKind

    seen: set[str] = set()
    for headers, story_id, count, lag in traced:
        parent = headers.get(TRACEPARENT, "")
        if not parent or parent in seen:
            continue
        seen.add(parent)
        root = _tracer.start_span(
            "projection.apply",
            context=_extract(headers),
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "fleet.story_id": story_id,
                "fleet.events": count,
                "fleet.lag_seconds": lag,
                "fleet.projector": projector,
            },
        )
        from opentelemetry.trace import set_span_in_context

        inner = set_span_in_context(root)
        for name, (start, end) in writes.items():
            child = _tracer.start_span(name, context=inner, start_time=start)
            child.end(end_time=end)
        root.end(end_time=max((end for _, end in writes.values()), default=time.time_ns()))


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, for log lines; None outside a recorded span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
