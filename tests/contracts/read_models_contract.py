"""One contract per read-model port: the in-memory fakes and the Neo4j / Valkey adapters pass the same
tests. The graph's version guard is what makes projection exactly-once: events apply in order, never
twice, and a gap is reported rather than skipped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fleet_actors.domain.events import ContextCreated, EventEnvelope, SubtaskCreated, SummaryRecorded
from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.ports.read_models import (
    ContextDocuments,
    DeadLetterIndex,
    GraphReadModel,
    ParkedEvent,
    ProjectionControl,
    SnapshotLink,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def story_events(story_id: str, count: int) -> list[EventEnvelope]:
    payloads = [ContextCreated("A story"), SubtaskCreated("T1", "First")] + [
        SummaryRecorded(f"summary {v}") for v in range(3, count + 1)
    ]
    return [EventEnvelope(f"{story_id}-e{v}", story_id, v, T0, payloads[v - 1]) for v in range(1, count + 1)]


def new_story_id() -> str:
    return "C" + uuid.uuid4().hex[:12]


class GraphReadModelContract:
    """Subclasses provide a ``graph`` fixture."""

    async def test_applies_in_order_and_reports_versions(self, graph: GraphReadModel):
        story_id = new_story_id()
        events = story_events(story_id, 3)
        result = await graph.apply({story_id: events}, {story_id: fold(StoryState(story_id), events)})
        assert result.applied_events == 3 and result.versions == {story_id: 3} and not result.gaps
        assert await graph.applied_versions([story_id]) == {story_id: 3}
        rows = await graph.story_rows(story_id)
        assert [r["id"] for r in rows["subtasks"]] == ["T1"]
        assert rows["story"][0]["version"] == 3

    async def test_a_redelivery_is_not_applied_twice(self, graph: GraphReadModel):
        story_id = new_story_id()
        events = story_events(story_id, 4)
        state = fold(StoryState(story_id), events)
        await graph.apply({story_id: events[:3]}, {story_id: fold(StoryState(story_id), events[:3])})
        again = await graph.apply({story_id: events}, {story_id: state})
        assert again.applied_events == 1 and again.versions[story_id] == 4
        assert (await graph.apply({story_id: events}, {story_id: state})).applied_events == 0
        assert await graph.applied_versions([story_id]) == {story_id: 4}

    async def test_a_gap_is_reported_and_nothing_applied(self, graph: GraphReadModel):
        story_id = new_story_id()
        events = story_events(story_id, 5)
        await graph.apply({story_id: events[:2]}, {story_id: fold(StoryState(story_id), events[:2])})
        result = await graph.apply({story_id: events[3:]}, {story_id: fold(StoryState(story_id), events)})
        assert result.gaps == {story_id: 2} and result.applied_events == 0
        assert await graph.applied_versions([story_id]) == {story_id: 2}

    async def test_one_story_gap_does_not_hold_back_another(self, graph: GraphReadModel):
        behind, fine = new_story_id(), new_story_id()
        behind_events, fine_events = story_events(behind, 4), story_events(fine, 2)
        result = await graph.apply(
            {behind: behind_events[2:], fine: fine_events},
            {behind: fold(StoryState(behind), behind_events), fine: fold(StoryState(fine), fine_events)},
        )
        assert result.gaps == {behind: 0} and result.versions[fine] == 2
        assert (await graph.applied_versions([fine]))[fine] == 2

    async def test_wipe_removes_only_the_named_stories(self, graph: GraphReadModel):
        gone, kept = new_story_id(), new_story_id()
        for story_id in (gone, kept):
            events = story_events(story_id, 2)
            await graph.apply({story_id: events}, {story_id: fold(StoryState(story_id), events)})
        await graph.link_snapshots([SnapshotLink(gone, 2, T0.isoformat())])
        await graph.wipe_stories([gone])
        assert (await graph.applied_versions([gone])).get(gone, 0) == 0
        assert (await graph.applied_versions([kept]))[kept] == 2
        assert (await graph.story_rows(gone))["story"] == []

    async def test_plain_task_ids_resolve_to_their_stories(self, graph: GraphReadModel):
        one, other = new_story_id(), new_story_id()
        for story_id in (one, other):
            events = story_events(story_id, 2)
            await graph.apply({story_id: events}, {story_id: fold(StoryState(story_id), events)})
        found = await graph.qualified_ids("task", "T1", limit=1000)
        assert f"{one}/T1" in found and f"{other}/T1" in found and found == sorted(found)
        assert await graph.qualified_ids("task", f"missing{one}", limit=11) == []

    async def test_neighbourhood_of_a_missing_node_is_none(self, graph: GraphReadModel):
        node, relationships = await graph.neighbourhood("story", new_story_id(), 1, limit=10)
        assert node is None and relationships == []


class ContextDocumentsContract:
    """Subclasses provide a ``documents`` fixture."""

    async def test_newest_version_wins(self, documents: ContextDocuments):
        story_id = new_story_id()
        events = story_events(story_id, 3)
        newer, older = fold(StoryState(story_id), events), fold(StoryState(story_id), events[:2])
        await documents.commit([newer])
        await documents.commit([older])  # a late delivery never moves a document backwards
        document = await documents.get(story_id)
        assert document is not None and document.version == 3 and document.state == newer
        assert await documents.versions([story_id, new_story_id()]) == {story_id: 3}

    async def test_missing_documents_are_none(self, documents: ContextDocuments):
        story_id = new_story_id()
        assert await documents.get_many([story_id]) == {story_id: None}

    async def test_processed_ids_and_offsets_commit_with_documents(self, documents: ContextDocuments):
        story_id = new_story_id()
        consumer = f"consumer-{story_id}"
        await documents.commit(
            [fold(StoryState(story_id), story_events(story_id, 1))], [f"{story_id}-e1"], {consumer: 41}
        )
        assert await documents.already_processed([f"{story_id}-e1", f"{story_id}-e2"]) == {f"{story_id}-e1"}
        assert await documents.offset(consumer) == 41
        assert await documents.offset(f"never-{story_id}") is None


def parked(story_id: str) -> ParkedEvent:
    return ParkedEvent(story_id, 3, 42, f"ctx.{story_id}.x.0", "projector-p0", "boom", 5, T0.isoformat(), 7)


class DeadLetterIndexContract:
    """Subclasses provide a ``dead_letter_index`` fixture."""

    async def test_hold_release_cycle(self, dead_letter_index: DeadLetterIndex):
        story_id = new_story_id()
        await dead_letter_index.hold(parked(story_id))
        assert (await dead_letter_index.held())[story_id] == parked(story_id)
        await dead_letter_index.request_release(story_id, "skip")
        assert (await dead_letter_index.pending_releases())[story_id] == "skip"
        await dead_letter_index.drop_release(story_id)
        assert story_id not in await dead_letter_index.pending_releases()
        assert story_id in await dead_letter_index.held()  # a failed release keeps the story held
        await dead_letter_index.request_release(story_id, "retry")
        await dead_letter_index.released(story_id)
        assert story_id not in await dead_letter_index.held()
        assert story_id not in await dead_letter_index.pending_releases()


class ProjectionControlContract:
    """Subclasses provide a ``control`` fixture (each test gets a fresh stream's records)."""

    async def test_pause_acknowledge_resume(self, control: ProjectionControl):
        assert await control.pausing_job() is None
        await control.pause("job-1")
        assert await control.pausing_job() == "job-1"
        assert await control.paused_for("projector-p0") is None
        await control.acknowledge_pause("job-1", ["projector-p0", "projector-p1"], ttl_seconds=30)
        assert await control.paused_for("projector-p1") == "job-1"
        await control.resume()
        assert await control.pausing_job() is None

    async def test_status_and_job_progress(self, control: ProjectionControl):
        projector, job = f"projector-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
        assert await control.status(projector) == {}
        await control.publish_status(projector, {"applied": 3, "last_error": ""})
        assert await control.status(projector) == {"applied": 3, "last_error": ""}
        assert (await control.statuses())[projector] == {"applied": 3, "last_error": ""}  # any pool size's
        assert await control.job_progress(job) == {}
        await control.record_job_progress(job, end_sequence="10", phase="pause")
        await control.record_job_progress(job, phase="replay")
        assert await control.job_progress(job) == {"end_sequence": "10", "phase": "replay"}

    async def test_rebuild_jobs_lists_every_job_of_the_stream(self, control: ProjectionControl):
        first, second = f"job-{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
        await control.record_job_progress(first, phase="done")
        await control.record_job_progress(second, phase="replay", end_sequence="7")
        jobs = await control.rebuild_jobs()
        assert jobs[first] == {"phase": "done"}
        assert jobs[second] == {"phase": "replay", "end_sequence": "7"}
