"""`verify` (issue #21 item 8): every property the graph mapping writes, orphans, undecodable events, progress."""

from __future__ import annotations

import nats

from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.domain.commands import AddDecision
from fleet_actors.jobs.verify import verify
from tests.integration.conftest import RunningProjectors, wait_until, write_story


async def _clean(settings, stories) -> bool:
    return (await verify(settings, stories)).ok


async def test_verify_finds_changed_properties_orphans_and_goes_on_past_an_undecodable_event(
    stream_settings, execute, unique_id
):
    changed, broken, fine = unique_id("C"), unique_id("U"), unique_id("F")
    for story in (changed, broken, fine):
        await write_story(execute, story)
    await execute(changed, AddDecision("Use Kafka", "ordering per key", decision_id="D9"))
    running = await RunningProjectors(stream_settings, 1).start()
    orphan = unique_id("orphan")
    try:
        # the full property comparison finds nothing on a graph the projector wrote
        await wait_until(lambda: _clean(stream_settings, [changed, broken, fine]), timeout=30)
        await running.stop()
        graph = await GraphStore.connect(stream_settings)
        await graph.write("MATCH (s:Story {story_id: $id}) SET s.title = 'tampered'", id=changed)
        await graph.write("MATCH (d:Decision {uid: $uid}) SET d.rationale = 'tampered'", uid=f"{changed}/D9")
        await graph.write("CREATE (:Subtask {uid: $uid, story_id: 'nowhere'})", uid=orphan)
        await graph.close()
        nc = await nats.connect(stream_settings.nats_url)
        try:
            await nc.jetstream().publish(stream_settings.story_subject(broken, "summary_recorded"), b"\xff\x00junk")
        finally:
            await nc.close()
        seen: list[tuple[int, int]] = []
        report = await verify(
            stream_settings, [changed, broken, fine, "no-such-story"], documents=False, census=True,
            progress=lambda done, total, seconds: seen.append((done, total)),
        )  # fmt: skip
        by_story = {s.story_id: s.differences for s in report.stories}
        assert any("graph story" in d and "tampered" in d for d in by_story[changed]), by_story[changed]
        assert any("graph decisions" in d and "tampered" in d for d in by_story[changed]), by_story[changed]
        assert len(by_story[broken]) == 1 and by_story[broken][0].startswith("undecodable event in the log")
        assert by_story[fine] == []  # checked after the undecodable story
        assert by_story["no-such-story"] == ["not in the event log"]
        assert any("orphan" in d and orphan in d for d in report.graph), report.graph
        assert seen and seen[-1] == (4, 4)
    finally:
        await running.stop()
        graph = await GraphStore.connect(stream_settings)
        await graph.write("MATCH (n:Subtask {uid: $uid}) DETACH DELETE n", uid=orphan)
        await graph.close()
