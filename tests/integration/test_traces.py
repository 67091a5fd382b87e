"""One trace from the client call to the graph write: the context crosses the request (as over Ray)
and the events' NATS headers, and the projector continues it when it applies them."""

from __future__ import annotations

import asyncio
import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleet_actors.actors.story_actor import StoryHost
from fleet_actors.application.messages import CommandRequest, pack, unpack
from fleet_actors.client import _traced
from fleet_actors.domain.commands import ApplyChanges, CreateStory, CreateSubtask
from fleet_actors.observability import tracing
from tests.integration.conftest import RunningProjectors


async def test_one_trace_from_the_client_call_to_the_graph_write(stream_settings, ray_runtime, event_store, unique_id):
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    projectors = await RunningProjectors(stream_settings, 1).start()
    story_id = unique_id("trace")
    host = StoryHost(story_id, stream_settings)
    try:
        with tracing.client_span(story_id, "ApplyChanges"):
            command = ApplyChanges((CreateStory("traced"), CreateSubtask("T1", "form", "DEV")))
            request = _traced(CommandRequest(story_id, command, unique_id("cmd")))
            assert request.trace and "traceparent" in request.trace
            result = await host.execute(unpack(pack(request)))  # pickled, as between FleetClient and the actor
        assert result.version == 2
        deadline = time.monotonic() + 30
        while not [s for s in exporter.get_finished_spans() if s.name == "projection.apply"]:
            assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
            await asyncio.sleep(0.1)
    finally:
        await projectors.stop()
        await host.close()
        tracing.disable()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name in (
        "fleet.command",
        "story.execute",
        "jetstream.append",
        "projection.apply",
        "graph.write",
        "documents.write",
    ):
        assert name in spans, sorted(spans)
    assert len({span.context.trace_id for span in spans.values()}) == 1, "one trace"

    def parent_of(name: str) -> str:
        parent = spans[name].parent
        assert parent is not None
        return next(n for n, s in spans.items() if s.context.span_id == parent.span_id)

    assert spans["fleet.command"].parent is None
    assert parent_of("story.execute") == "fleet.command"
    assert parent_of("jetstream.append") == "story.execute"
    assert parent_of("projection.apply") == "jetstream.append"
    assert parent_of("graph.write") == "projection.apply"
    assert parent_of("documents.write") == "projection.apply"
    applied = spans["projection.apply"]
    assert applied.attributes is not None and applied.attributes["fleet.lag_seconds"] >= 0
    assert applied.attributes["fleet.story_id"] == story_id
    assert spans["story.execute"].attributes["fleet.command"] == "ApplyChanges"  # type: ignore[index]
    # the applied span starts after the append and ends after both writes
    assert applied.start_time >= spans["jetstream.append"].start_time
    assert applied.end_time >= spans["graph.write"].end_time


async def test_tracing_off_adds_nothing(stream_settings, event_store, unique_id):
    assert not tracing.enabled()
    request = _traced(CommandRequest("s", CreateStory("t"), "c"))
    assert request.trace is None
    headers: dict[str, str] = {}
    tracing.inject_headers(headers)
    assert headers == {}
    with tracing.client_span("s", "CreateStory") as span:
        assert span is None
