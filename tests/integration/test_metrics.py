"""Metrics on the real stack: Ray's metrics endpoint after commands, a conflict, a parked event and a
projector kill; the counters, histograms and gauges moved as they should."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Callable

import nats
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from fleet_actors import ConcurrencyConflict, FleetClient, RuleViolation
from fleet_actors.actors.projector_actor import projector_actor_name, start_projectors, stop_projectors
from fleet_actors.actors.story_actor import live_story_handle
from fleet_actors.observability.metrics import metrics
from tests.integration.conftest import TEST_POLICY

Samples = list[tuple[str, dict[str, str], float]]


def ray_metrics_url() -> str:
    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"


def scrape(url: str) -> Samples:
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, sample_labels, v in samples if n == name and labels.items() <= sample_labels.items())


def values(samples: Samples, name: str, **labels: str) -> list[float]:
    return [v for n, sample_labels, v in samples if n == name and labels.items() <= sample_labels.items()]


async def eventually(check: Callable[[Samples], bool | list[str]], url: str, timeout: float = 60) -> Samples:
    """Scrape until `check` holds; a check may name what is still missing (an empty list is met)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, url)
        outcome = check(samples)
        if outcome is True or outcome == []:
            return samples
        assert time.monotonic() < deadline, f"the metrics did not move in {timeout:.0f} s: {outcome or 'check false'}"
        await asyncio.sleep(1)


@pytest.fixture
def pool_settings(stream_settings, ray_runtime):
    settings = stream_settings.replace(ray_namespace=f"obs-{stream_settings.stream_name.lower()}")
    yield settings
    stop_projectors(settings)


async def test_metrics_move_on_the_real_stack(pool_settings, event_store, unique_id):
    url = ray_metrics_url()
    before = await asyncio.to_thread(scrape, url)
    await asyncio.to_thread(start_projectors, pool_settings, TEST_POLICY)
    client = FleetClient(pool_settings).aio
    story = unique_id("obs")

    # a few commands, a duplicate, a conflict and a rejection
    created = await client.create_story(story, "observed", command_id=f"{story}-create")
    await client.create_story(story, "observed", command_id=f"{story}-create")  # duplicate
    await client.create_subtask(story, "T1", "form", "DEV")
    with pytest.raises(ConcurrencyConflict):
        await client.create_subtask(story, "T2", "api", "DEV", expected_version=created.version)
    with pytest.raises(RuleViolation):
        await client.update_subtask(story, "T1", "DONE")  # PENDING -> DONE skips IN_PROGRESS
    last = await client.record_summary(story, "done soon")
    await client.wait_for_projection(story, last.version, timeout=30)

    # a poison event: retried, then parked
    poisoned = unique_id("obsP")
    await client.create_story(poisoned, "poisoned")
    nc = await nats.connect(pool_settings.nats_url)
    try:
        await nc.jetstream().publish(pool_settings.story_subject(poisoned, "summary_recorded"), b"\xff\x00garbage")
    finally:
        await nc.close()

    def unmet(samples: Samples) -> list[str]:
        """What has not reached the endpoint yet: each process exports its metrics on its own
        interval, so the story actors' counters can arrive before the registry's gauges."""

        def delta(name: str, **labels: str) -> float:
            return total(samples, name, **labels) - total(before, name, **labels)

        def highest(name: str, **labels: str) -> float:
            return max(values(samples, name, **labels), default=float("-inf"))

        checks = {
            # counters: accepted, duplicate, conflict, rejected, parked, applied
            "accepted creates": delta("ray_fleet_commands_total", command="CreateStory", outcome="accepted") >= 2,
            "duplicate create": delta("ray_fleet_commands_total", command="CreateStory", outcome="duplicate") >= 1,
            "conflict": delta("ray_fleet_commands_total", command="CreateSubtask", outcome="conflict") >= 1,
            "rejection": delta("ray_fleet_commands_total", outcome="rejected", reason="FAILED_PRECONDITION") >= 1,
            "parked event": delta("ray_fleet_events_parked_total") >= 1,
            "applied events": delta("ray_fleet_projection_events_total", result="applied") >= 4,
            # histograms: the actor's command latency, the append latency, activation time, batch sizes
            "command latency": delta("ray_fleet_command_duration_seconds_count", command="CreateSubtask") >= 2,
            "command latency sum": delta("ray_fleet_command_duration_seconds_sum") > 0,
            "append latency": delta("ray_fleet_append_duration_seconds_count", outcome="ok") >= 4,
            "activations": delta("ray_fleet_story_activations_total") >= 2,
            "activation time": delta("ray_fleet_story_activation_duration_seconds_count") >= 2,
            "batch sizes": delta("ray_fleet_projection_batch_events_count") >= 1,
            "apply time": delta("ray_fleet_projection_apply_duration_seconds_count") >= 1,
            "redelivery": delta("ray_fleet_projection_redeliveries_total") >= 1,  # the poison event, before parking
            # gauges: parked now, live actors against the cap, the pool alive and not paused, lag per partition
            "parked gauge": highest("ray_fleet_parked_events") >= 1,
            "live stories": highest("ray_fleet_live_stories") >= 2,
            "live cap": highest("ray_fleet_live_stories_cap") == pool_settings.max_live_stories,
            "lag seconds": bool(values(samples, "ray_fleet_projection_lag_seconds")),
            "lag events": bool(values(samples, "ray_fleet_projection_lag_events")),
        }
        for index in range(pool_settings.projectors):
            label = f"projector-{index}-of-{pool_settings.projectors}"
            checks[f"{label} up"] = 1 in values(samples, "ray_fleet_projector_up", projector=label)
            checks[f"{label} heartbeat"] = (
                highest("ray_fleet_projector_heartbeat_timestamp_seconds", projector=label) > time.time() - 30
            )
        return [name for name, met in checks.items() if not met]

    samples = await eventually(unmet, url)

    # no story id ever becomes a label value of ours (Ray's own actor metrics name the actors)
    ours = [labels for n, labels, _ in samples if n.startswith("ray_fleet_")]
    assert not any(story in value for labels in ours for value in labels.values())

    # the client's own histogram (this process: prometheus_client's default registry)
    client_count = metrics().client_command_duration.child("CreateSubtask", "conflict")
    assert client_count._sum.get() > 0  # type: ignore[attr-defined]

    # a projector kill: Ray restarts it, and its new worker reports itself up with a fresh heartbeat
    label = "projector-0-of-2"
    victim = ray.get_actor(projector_actor_name(0, 2), namespace=pool_settings.ray_namespace)
    old_workers = {
        labels.get("WorkerId")
        for n, labels, _ in samples
        if n == "ray_fleet_projector_up" and labels["projector"] == label
    }
    ray.kill(victim, no_restart=False)

    def restarted(samples: Samples) -> bool:
        return any(
            n == "ray_fleet_projector_up"
            and labels["projector"] == label
            and labels.get("WorkerId") not in old_workers
            and v == 1
            for n, labels, v in samples
        )

    samples = await eventually(restarted, url)

    # a passivation, counted by the registry (the actor's own process exits before Ray exports)
    passivated_before = total(samples, "ray_fleet_story_passivations_total")
    handle = live_story_handle(poisoned, pool_settings)
    assert handle is not None
    with contextlib.suppress(ray.exceptions.RayActorError):
        await handle.passivate.remote()
    await eventually(lambda s: total(s, "ray_fleet_story_passivations_total") > passivated_before, url)


async def test_rebuild_progress_reaches_the_ray_endpoint(stream_settings, ray_runtime):
    """The rebuild's driver is scraped by nobody: its progress goes out through its first replay actor."""
    from fleet_actors.actors.replay_actor import replay_actor_class

    url = ray_metrics_url()
    actor = replay_actor_class().remote(stream_settings, "progress-test", 0, 1)
    try:
        await actor.report_progress.remote(0.375)
        samples = await eventually(lambda s: 0.375 in values(s, "ray_fleet_rebuild_progress_ratio"), url)
        assert 0.375 in values(samples, "ray_fleet_rebuild_progress_ratio")
    finally:
        ray.kill(actor)


def test_a_long_running_driver_serves_its_metrics_where_configured(stream_settings, caplog):
    from fleet_actors.observability.metrics import serve_process_metrics, stop_metrics_servers

    assert serve_process_metrics(stream_settings.replace(metrics_address="")) is None
    with caplog.at_level("INFO", logger="fleet_actors.metrics"):
        port = serve_process_metrics(stream_settings.replace(metrics_address="127.0.0.1:0"))
    try:
        assert port and f"metrics on http://127.0.0.1:{port}/metrics" in caplog.text
        names = {name for name, _, _ in scrape(f"http://127.0.0.1:{port}/metrics")}
        assert "fleet_rebuild_progress_ratio" in names
    finally:
        stop_metrics_servers()
