"""Import a generated legacy graph from the session's ArcadeDB into a private stream, then compare.

The legacy sample uses labels of its own (legacy_mapping.json): the projection writes the same
story ids as Story nodes into the same database, and must not meet the legacy nodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.domain.commands import AddDecision, Command, RecordMilestone
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import ConcurrencyConflict, Retryable
from fleet_actors.jobs.verify import verify
from fleet_actors.migration.compare import compare_legacy, compare_story, legacy_view, state_view
from fleet_actors.migration.importer import (
    IMPORT_ACTOR,
    Action,
    ImportReport,
    import_legacy,
    import_story,
    plan_genesis,
)
from fleet_actors.migration.legacy_reader import LegacyReader, LegacySource, LegacyStory
from fleet_actors.migration.mapping import DEFAULT_MAPPING, LegacyMapping
from fleet_actors.migration.sample import FAULTS, SampleReport, write_sample
from fleet_actors.settings import Settings
from tests.integration.conftest import RunningProjectors, wait_until

#: each live writer sends at least this many commands, and goes on until the import has finished
MIN_LIVE_COMMANDS = 6


@pytest.fixture
async def reader(legacy_source: LegacySource, legacy_mapping: LegacyMapping) -> AsyncIterator[LegacyReader]:
    opened = await LegacyReader.connect(legacy_source, legacy_mapping)
    yield opened
    await opened.close()


async def sample(
    source: LegacySource, mapping: LegacyMapping, prefix: str, stories: int, **options: bool
) -> tuple[str, SampleReport]:
    """Write a sample under ``prefix``; returns the story id prefix to import by and the sample."""
    report = await write_sample(source, stories, prefix=prefix, mapping=mapping, seed=stories, **options)
    return f"{prefix}-", report


def as_read(story: LegacyStory) -> LegacyStory:
    """A generated story as the reader returns it: legacy_mapping.json has no estimated_hours."""
    return dataclasses.replace(story, subtasks=tuple(dataclasses.replace(s, estimated_hours=0) for s in story.subtasks))


async def load(store: JetStreamEventStore, story_id: str) -> StoryState:
    runtime = StoryRuntime(story_id, store)
    await runtime.load()  # also checks that versions have no gaps
    return runtime.state


async def project_and_verify(settings: Settings, versions: dict[str, int]) -> None:
    running = await RunningProjectors(settings, 2).start()
    try:

        async def projected() -> bool:
            return await running.graph.applied_versions(list(versions)) == versions

        await wait_until(projected, timeout=120)  # generous: CI machines are often busy
        report = await verify(settings)
        assert report.ok, report.differences
        assert sorted(s.story_id for s in report.stories) == sorted(versions)
    finally:
        await running.stop()


async def test_imported_stories_match_the_legacy_graph_and_so_does_the_projection(
    reader, legacy_source, legacy_mapping, event_store, stream_settings, unique_id
):
    prefix, generated = await sample(legacy_source, legacy_mapping, unique_id("L"), 30)
    ids = [s.story_id for s in generated.stories]
    legacy = await reader.read_stories(ids)
    assert legacy == [as_read(s) for s in generated.stories]  # every fact and time survives the round trip

    report = await import_legacy(reader, event_store, story_prefix=prefix, page_size=8)

    assert (report.count(Action.IMPORT), report.problems) == (30, [])
    assert report.events == sum(len(plan_genesis(s, now=s.created_at).steps) for s in legacy)
    versions = {}
    for story in legacy:
        state = await load(event_store, story.story_id)
        assert compare_story(story, state) == [], story.story_id
        assert (state.created_at, state.created_by) == (story.created_at, story.created_by)
        assert {d.decision_id: d.decided_at for d in story.decisions} == {
            d.decision_id: d.decided_at for d in state.decisions.values()
        }
        assert [(m.milestone_id, m.at) for m in story.milestones] == [(m.milestone_id, m.at) for m in state.milestones]
        for subtask in story.subtasks:
            if subtask.created_at is not None:
                assert state.subtasks[subtask.subtask_id].created_at == subtask.created_at
        versions[story.story_id] = state.version

    await project_and_verify(stream_settings, versions)
    # The projected graph read back with the default mapping is the legacy graph again.
    projected_reader = await LegacyReader.connect(legacy_source, DEFAULT_MAPPING)
    try:
        projected = await projected_reader.read_stories(ids)
    finally:
        await projected_reader.close()
    assert [legacy_view(p) for p in projected] == [legacy_view(s) for s in legacy]
    assert [(p.created_at, p.created_by) for p in projected] == [(s.created_at, s.created_by) for s in legacy]
    assert all(not p.problems for p in projected)


async def test_importing_again_appends_nothing(reader, legacy_source, legacy_mapping, event_store, unique_id):
    prefix, _ = await sample(legacy_source, legacy_mapping, unique_id("L"), 8)
    first = await import_legacy(reader, event_store, story_prefix=prefix)
    assert first.count(Action.IMPORT) == 8 and first.events > 0
    info = await event_store.connection.jsm().stream_info(event_store._settings.stream_name)

    again = await import_legacy(reader, event_store, story_prefix=prefix)

    assert (again.count(Action.ALREADY_IMPORTED), again.events, again.problems) == (8, 0, [])
    after = await event_store.connection.jsm().stream_info(event_store._settings.stream_name)
    assert after.state.last_seq == info.state.last_seq


async def test_malformed_legacy_nodes_are_reported_and_the_rest_imported(
    reader, legacy_source, legacy_mapping, event_store, unique_id
):
    prefix, generated = await sample(legacy_source, legacy_mapping, unique_id("L"), 10, with_problems=True)

    report = await import_legacy(reader, event_store, story_prefix=prefix)

    assert report.count(Action.IMPORT) == 10  # every well-formed story; the one with a bad id cannot be
    problems = report.problems
    assert len(problems) == len(FAULTS)
    for story_id, fault in generated.faults:
        if fault == "story with a malformed id":
            assert any(p.story_id == "" and repr(story_id) in p.reason for p in problems), fault
        else:
            assert any(p.story_id == story_id for p in problems), fault
    compared = await compare_legacy(reader, event_store, story_prefix=prefix)
    assert compared.stories == 10 and len(compared.problems) == len(FAULTS)
    unknown_status = generated.faults[FAULTS.index("subtask with an unknown status")][0]
    assert compared.differences == [f"{unknown_status}: subtasks: legacy graph [X1/WIP] event log [X1/PENDING]"]


async def test_import_while_commands_arrive_for_imported_stories_stays_consistent(
    reader, legacy_source, legacy_mapping, event_store, stream_settings, unique_id
):
    prefix, generated = await sample(legacy_source, legacy_mapping, unique_id("L"), 12)
    legacy = {s.story_id: s for s in await reader.read_stories([s.story_id for s in generated.stories])}
    ids = sorted(legacy)
    for story_id in ids[:8]:
        assert (await import_story(event_store, legacy[story_id])).action == Action.IMPORT
    plans = {story_id: plan_genesis(legacy[story_id], now=legacy[story_id].created_at) for story_id in ids}
    for story_id in ids[8:]:  # these imports "died" after three commands
        runtime = StoryRuntime(story_id, event_store)
        plan = plans[story_id]
        for n in range(3):
            await runtime.execute(CommandRequest(story_id, plan.steps[n].command, plan.command_id(n), IMPORT_ACTOR))

    live_store = await JetStreamEventStore.connect(stream_settings)  # another process's connection
    live_ids = ids[6:]  # two finished imports and the four interrupted ones
    issued: dict[str, list[str]] = {story_id: [] for story_id in ids}
    importing_done = asyncio.Event()

    async def live_writer(story_id: str) -> None:
        """Commands keep arriving for the story until the import has finished."""
        runtime = StoryRuntime(story_id, live_store)
        n = 0
        while n < MIN_LIVE_COMMANDS or not importing_done.is_set():
            command: Command = (
                RecordMilestone("DEMO", f"live {n}", f"U{n}")
                if n % 2
                else AddDecision(f"Live {n}", "decided while migrating", decision_id=f"UD{n}")
            )
            request = CommandRequest(story_id, command, f"live-{n}", "dana")
            for attempt in range(100):
                try:
                    await runtime.execute(request)
                    break
                except (ConcurrencyConflict, Retryable):  # what a client retries, with the same command id
                    await asyncio.sleep(random.uniform(0.5, 1.0) * min(0.25, 0.005 * 2**attempt))
            else:
                raise AssertionError(f"live command {n} on {story_id} kept failing")
            issued[story_id].append(request.command_id)
            n += 1
            await asyncio.sleep(0.02)

    async def run_import() -> ImportReport:
        try:
            return await import_legacy(reader, event_store, story_prefix=prefix, concurrency=12)
        finally:
            importing_done.set()

    try:
        report, *_ = await asyncio.gather(run_import(), *(live_writer(story_id) for story_id in live_ids))
    finally:
        await live_store.close()

    assert (report.count(Action.ALREADY_IMPORTED), report.count(Action.RESUME), report.problems) == (8, 4, [])
    versions = {}
    for story_id in ids:
        plan = plans[story_id]
        history = [s.envelope async for s in event_store.read(story_id)]
        expected = [plan.command_id(n) for n in range(len(plan.steps))] + issued[story_id]
        assert sorted(e.command_id for e in history) == sorted(expected)  # nothing lost, nothing twice
        state = await load(event_store, story_id)
        want, have = legacy_view(legacy[story_id]), state_view(state)
        live_decisions = {(command_id.replace("live-", "UD"),) for command_id in issued[story_id][::2]}
        assert set(have.pop("decisions")) == set(want.pop("decisions")) | live_decisions
        assert have.pop("milestone count") == Counter(
            [(len(legacy[story_id].milestones) + len(issued[story_id]) // 2,)]
        )
        del want["milestone count"]
        assert have == want, story_id
        versions[story_id] = state.version
    await project_and_verify(stream_settings, versions)
