"""Golden v1 events in a real stream: actor state, graph, Valkey document and history all upcast."""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from fleet_actors import FleetClient
from fleet_actors.adapters.jetstream.census import event_census
from fleet_actors.codec import event_type_of
from fleet_actors.domain.events import Alternative
from fleet_actors.errors import EventDecodeError
from fleet_actors.jobs.verify import verify
from fleet_actors.proto import events_pb2
from tests.integration.conftest import RunningProjectors, wait_until, write_story

GOLDEN = Path(__file__).parent.parent / "fixtures" / "events_v1"


async def publish_raw(settings, story_id: str, blobs: list[bytes]) -> None:
    """Store bytes exactly as a writer of their era did (one event per publish, conditional)."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    head = 0
    for blob in blobs:
        message = events_pb2.ContextEvent.FromString(blob)
        ack = await js.publish(
            settings.story_subject(story_id, event_type_of(message)),
            blob,
            headers={
                "Nats-Msg-Id": message.event_id,
                "Nats-Expected-Last-Subject-Sequence": str(head),
                "Nats-Expected-Last-Subject-Sequence-Subject": settings.story_filter(story_id),
            },
        )
        head = ack.seq
    await nc.close()


@pytest.fixture
def golden_blobs() -> list[bytes]:
    return [path.read_bytes() for path in sorted(GOLDEN.glob("*.bin"))]


async def test_v1_history_reads_correctly_everywhere(ray_runtime, event_store, stream_settings, golden_blobs):
    await publish_raw(stream_settings, "golden-v1", golden_blobs)
    client = FleetClient(stream_settings)
    state = await client.aio.get_story("golden-v1")
    assert (state.version, state.subtasks["T1"].status, state.subtasks["T2"].status) == (12, "DONE", "IN_PROGRESS")
    assert state.decisions["D1"].alternatives[0] == Alternative("Server-side sessions", "more state to replicate")
    history = await client.aio.history("golden-v1")
    assert [e.schema_version for e in history if e.event_type == "subtask_updated"] == [1, 1, 1, 1]
    assert "waiting on QA" in history[9].payload.note
    # New commands append v2 events after the v1 ones.
    result = await client.aio.update_subtask("golden-v1", "T2", "DONE")
    assert result.version == 13 and (await client.aio.history("golden-v1", 13))[0].schema_version == 2

    running = await RunningProjectors(stream_settings, 1).start()
    try:

        async def projected() -> bool:
            return (await running.graph.applied_versions(["golden-v1"]))["golden-v1"] == 13

        await wait_until(projected)
        rows = await running.graph.query(
            "MATCH (d:Decision {uid: 'golden-v1/D1'}) RETURN d.alternatives AS alternatives"
        )
        assert [a["title"] for a in json.loads(rows[0]["alternatives"])] == [
            "Server-side sessions",
            "Long-lived JWT",
            "Opaque tokens",
        ]
        document = await running.cache.get("golden-v1")
        assert document.state.decisions["D1"].alternatives == state.decisions["D1"].alternatives
        assert (await verify(stream_settings)).ok
    finally:
        await running.stop()

    rows, unreadable = await event_census(stream_settings)
    counts = {(r.event_type, r.schema_version): r.count for r in rows}
    assert counts[("subtask_updated", 1)] == 4 and counts[("subtask_updated", 2)] == 1
    assert counts[("decision_added", 1)] == 2 and unreadable == 0
    assert next(r for r in rows if r.event_type == "decision_added").status.startswith("upcast on every read")


async def test_event_from_a_newer_writer_is_parked_not_applied(ray_runtime, stream_settings, execute, golden_blobs):
    await write_story(execute, "older-code")
    future = events_pb2.ContextEvent.FromString(golden_blobs[6])
    future.aggregate_id, future.version, future.schema_version, future.event_id = "older-code", 11, 99, "from-v99"
    nc = await nats.connect(stream_settings.nats_url)
    await nc.jetstream().publish(
        stream_settings.story_subject("older-code", "subtask_updated"), future.SerializeToString()
    )
    running = await RunningProjectors(stream_settings, 1).start()
    try:
        dead_letters = running.dead_letters

        async def parked() -> bool:
            return "older-code" in await dead_letters.held()

        await wait_until(parked)
        assert "newer than this code" in (await dead_letters.held())["older-code"].error
        assert (await running.graph.applied_versions(["older-code"]))["older-code"] == 10
    finally:
        await running.stop()
        await nc.close()
    with pytest.raises(EventDecodeError, match="newer than this code"):
        await FleetClient(stream_settings).aio.get_story("older-code")
    rows, _ = await event_census(stream_settings)
    assert any(r.schema_version == 99 and r.status.startswith("NEWER") for r in rows)
