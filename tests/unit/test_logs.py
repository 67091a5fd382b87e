"""Structured logs: JSON lines with the bound story and command, the trace ids, no credentials."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleet_actors.observability import logs, tracing


def _logger(stream: io.StringIO) -> logging.Logger:
    logs.install_record_context()
    logger = logging.getLogger(f"test-logs-{id(stream)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def test_json_lines_carry_the_bound_fields_and_no_credentials() -> None:
    stream = io.StringIO()
    log = _logger(stream)
    with logs.bind(story_id="S-1", command_id="c-7"):
        log.warning("cannot reach %s", "nats://alice:secret@nats:4222")
    log.info("outside", extra={"event_id": "e-3"})
    try:
        raise ValueError("boom valkey://bob:pw@cache:6379")
    except ValueError:
        log.exception("failed")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["story_id"] == "S-1" and first["command_id"] == "c-7" and first["levelname"] == "WARNING"
    assert "secret" not in first["message"] and "nats://" in first["message"]
    assert "story_id" not in second and second["event_id"] == "e-3"
    assert "ValueError" in third["exc_text"] and "pw@" not in third["exc_text"]


def test_json_lines_carry_the_trace_of_the_current_span() -> None:
    stream = io.StringIO()
    log = _logger(stream)
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    try:
        with tracing.span("work"):
            log.info("inside a span")
        log.info("outside")
    finally:
        tracing.disable()
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    (span,) = exporter.get_finished_spans()
    assert inside["trace_id"] == format(span.context.trace_id, "032x")
    assert inside["span_id"] == format(span.context.span_id, "016x")
    assert "trace_id" not in outside


def test_text_format_stays_the_default() -> None:
    assert isinstance(logs.formatter("text"), logging.Formatter)
    assert not isinstance(logs.formatter("text"), logs.JsonFormatter)
    assert logs.ray_logging_config("text") is None
