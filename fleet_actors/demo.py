"""The main job: a few stories driven through their life cycle by story actors, projected and verified."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from fleet_actors.client import FleetClient, connect_ray
from fleet_actors.errors import RuleViolation
from fleet_actors.settings import Settings

STORIES = [
    ("Checkout with saved cards", "Let returning customers pay with a stored card."),
    ("Audit log export", "Compliance wants a CSV export of every admin action."),
    ("Rate-limit the public API", "Protect the API from bursts without hurting paying tenants."),
]


@contextlib.contextmanager
def demo_stack(settings: Settings | None) -> Iterator[Settings]:
    """The configured servers if FLEET_NATS_URL is set, else an embedded stack in a temporary folder."""
    if settings is not None:
        yield settings
        return
    from fleet_actors.devstack import LocalStack

    folder = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    print(f"starting embedded NATS, Valkey and ArcadeDB in {folder} ...", flush=True)
    started = time.monotonic()
    with LocalStack(folder, ray=False) as stack:
        print(f"  ready in {time.monotonic() - started:.1f} s", flush=True)
        yield stack.settings(Settings(ray_namespace=f"demo-{uuid.uuid4().hex[:6]}"))


def drive_story(client: FleetClient, story_id: str, title: str, description: str) -> list[str]:
    """One story's life: design decisions, subtasks, progress, phase changes, milestones."""
    log = []
    result = client.create_story(story_id, title, description, actor="planner-agent")
    log.append(f"created v{result.version}")
    client.create_subtask(story_id, "design-api", "Design the API", "architect", priority=1, actor="architect-agent")
    client.create_subtask(story_id, "implement", "Implement it", "dev", dependencies=["design-api"], priority=2)
    client.create_subtask(story_id, "tests", "Write the tests", "qa", dependencies=["implement"])
    first = client.add_decision(
        story_id, "Keep it behind a feature flag", "Roll out to 5% of tenants first; roll back instantly.",
        decision_type="ARCHITECTURE", alternatives="Big-bang release", decided_by="architect-agent",
    )  # fmt: skip
    second = client.add_decision(
        story_id, "Flag service: in-house", "The vendor SDK adds 40 ms to cold starts.",
        decision_type="IMPLEMENTATION", decided_by="dev-agent",
    )  # fmt: skip
    client.relate_decisions(story_id, second.decision_id, first.decision_id, "DEPENDS_ON")
    client.record_impact(story_id, first.decision_id, "implement")
    client.update_subtask(story_id, "design-api", "IN_PROGRESS", actor="architect-agent")
    client.update_subtask(story_id, "design-api", "DONE", actor="architect-agent")
    client.transition_phase(story_id, "BUILD", "design reviewed", actor="architect-agent")
    client.record_milestone(story_id, "DESIGN_APPROVED", "API design signed off")
    client.update_subtask(story_id, "implement", "IN_PROGRESS", actor="dev-agent")
    try:
        client.transition_phase(story_id, "DOCS")  # skipping TEST is refused
    except RuleViolation as error:
        log.append(f"refused as expected: {error}")
    client.update_subtask(story_id, "implement", "DONE", actor="dev-agent")
    client.transition_phase(story_id, "TEST", actor="dev-agent")
    client.update_subtask(story_id, "tests", "IN_PROGRESS", actor="qa-agent")
    client.update_subtask(story_id, "tests", "DONE", actor="qa-agent")
    client.record_summary(story_id, "Implemented behind a flag; tests green.", actor="qa-agent")
    result = client.transition_phase(story_id, "DOCS", actor="qa-agent")
    log.append(f"final v{result.version}")
    return log


def show_gateway(settings: Settings, story_id: str) -> None:
    """Serve the agents' gRPC API for a moment and ask it for a developer's context, as an agent would."""
    from fleet_actors.gateway import gateway_in_thread
    from fleet_actors.proto import context_service_pb2 as pb
    from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
    from fleet_actors.tls import gateway_channel

    with gateway_in_thread(settings) as gateway, gateway_channel(settings, gateway.address) as channel:
        stub = pb_grpc.ContextServiceStub(channel)
        reply = stub.GetContext(pb.GetContextRequest(story_id=story_id, role="DEV", phase="BUILD", token_budget=400))
        print(f"\ngRPC gateway on {gateway.address}: GetContext({story_id}, DEV, BUILD, budget 400)")
        print(f"  version {reply.version}, {reply.token_count} tokens, scopes {', '.join(reply.scopes)}")
        for line in reply.context.splitlines()[:8]:
            print(f"  | {line}")


def run_demo(settings: Settings | None = None) -> int:
    from fleet_actors.actors.projector_actor import ensure_projectors, stop_projectors
    from fleet_actors.jobs.verify import verify

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with demo_stack(settings) as active:
        import ray

        joined = not ray.is_initialized()
        connect_ray(active)
        started_pool = False
        try:
            client = FleetClient(active)
            print(f"starting {active.projectors} projectors ...", flush=True)
            # A tool stops only what it started: the projector pool of a running cluster stays up.
            started_pool = ensure_projectors(active)
            if not started_pool:
                print("  (using the cluster's running projector pool)", flush=True)
            run_id = uuid.uuid4().hex[:6]
            versions = {}
            for number, (title, description) in enumerate(STORIES, start=1):
                story_id = f"demo-{run_id}-{number}"
                started = time.monotonic()
                log = drive_story(client, story_id, title, description)
                versions[story_id] = client.get_story(story_id).version
                print(f"\n{story_id}: {title}  ({time.monotonic() - started:.2f} s)")
                for line in log:
                    print(f"  {line}")
            print("\nfinal states (from the story actors):")
            for story_id in versions:
                state = client.get_story(story_id)
                done = sum(s.status == "DONE" for s in state.subtasks.values())
                print(
                    f"  {story_id}: v{state.version} phase={state.phase} status={state.status} "
                    f"subtasks={done}/{len(state.subtasks)} done decisions={len(state.decisions)} "
                    f"milestones={len(state.milestones)} events={len(client.history(story_id))}"
                )
            print("\nread model (after the projectors caught up):")
            for story_id, version in versions.items():
                view = client.wait_for_projection(story_id, version, timeout=60)
                print(f"  {story_id}: context document v{view.version}, graph v{view.graph_version}")
            show_gateway(active, next(iter(versions)))
            report = asyncio.run(verify(active, list(versions)))
            print(f"\nverify: {len(report.stories)} stories, {len(report.differences)} differences")
            for difference in report.differences:
                print(f"  {difference}")
            return 0 if report.ok else 1
        finally:
            if started_pool:
                stop_projectors(active)
            if joined:
                ray.shutdown()
