"""The gateway's metrics: RPCs by method and status code with latency, scraped from FLEET_METRICS_ADDRESS."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fleet_actors.observability.metrics import serve_metrics
from fleet_actors.proto import context_service_pb2 as pb
from tests.conftest import unique_id
from tests.gateway.conftest import Gateway, new_story, rpc_error

SERVICE = "/fleet.context.v1.ContextService/"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_rpcs_are_counted_by_method_and_code(gateway: Gateway) -> None:
    port = serve_metrics("127.0.0.1:0")
    assert port
    before = await asyncio.to_thread(scrape, port)
    story_id = await new_story(gateway.stub)
    await gateway.stub.CreateTask(pb.CreateTaskRequest(story_id=story_id, task_id="T1", title="Form", role="DEV"))
    error = await rpc_error(gateway.stub.CreateTask(pb.CreateTaskRequest(story_id=unique_id("missing"), title="x")))
    code = error.code().name
    health = health_pb2_grpc.HealthStub(gateway.channel)
    await health.Check(health_pb2.HealthCheckRequest(service=""))
    after = await asyncio.to_thread(scrape, port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("fleet_gateway_rpcs_total", method=SERVICE + "CreateStory", code="OK") == 1
    assert delta("fleet_gateway_rpcs_total", method=SERVICE + "CreateTask", code="OK") == 1
    assert delta("fleet_gateway_rpcs_total", method=SERVICE + "CreateTask", code=code) == 1
    assert delta("fleet_gateway_rpcs_total", method="/grpc.health.v1.Health/Check", code="OK") == 1
    latency = {"method": SERVICE + "CreateTask", "code": "OK"}
    assert delta("fleet_gateway_rpc_duration_seconds_count", **latency) == 1
    assert delta("fleet_gateway_rpc_duration_seconds_sum", **latency) > 0
    assert delta("fleet_gateway_rpc_duration_seconds_bucket", **latency, le="+Inf") == 1
    assert value(after, "fleet_gateway_serving") == 1
    # the gateway's FleetClient: command latency as the caller sees it
    assert delta("fleet_client_command_duration_seconds_count", command="CreateSubtask", outcome="accepted") == 1
    assert delta("fleet_client_command_duration_seconds_count", command="CreateStory", outcome="accepted") == 1


async def test_an_unauthenticated_call_is_counted_with_its_code(settings, ray_runtime) -> None:
    from tests.gateway.conftest import gateway_settings, running_gateway

    port = serve_metrics("127.0.0.1:0")
    assert port
    async with running_gateway(gateway_settings(settings), token="s3cret") as gateway:
        before = await asyncio.to_thread(scrape, port)
        error = await rpc_error(gateway.stub.GetContext(pb.GetContextRequest(story_id="x")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        after = await asyncio.to_thread(scrape, port)
    key = {"method": SERVICE + "GetContext", "code": "UNAUTHENTICATED"}
    assert value(after, "fleet_gateway_rpcs_total", **key) - value(before, "fleet_gateway_rpcs_total", **key) == 1


async def test_an_rpc_continues_the_callers_trace_into_the_command(gateway: Gateway) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fleet_actors.observability import tracing

    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        await gateway.stub.CreateStory(
            pb.CreateStoryRequest(story_id=unique_id("gwt"), title="traced"),
            metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),),
        )
    finally:
        tracing.disable()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    rpc, command = spans[f"grpc {SERVICE}CreateStory"], spans["fleet.command"]
    assert format(rpc.context.trace_id, "032x") == trace_id
    assert command.context.trace_id == rpc.context.trace_id
    assert command.parent is not None and command.parent.span_id == rpc.context.span_id
