"""User projections (projections/api.py) on the real stack: NATS, Valkey, a Parquet archive and the
SQLite example. Registered after the log has history (part of it only in the archive), a projection
ends with exactly the events of a replay and goes on live; killed mid-catch-up it resumes without
applying anything twice; a poison event parks only its story."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from examples.decisions_by_role import DecisionsByRole
from fleet_actors.adapters.archive import Archive, ArchivedEventStore
from fleet_actors.adapters.jetstream import JetStreamEventStore, connect_nats
from fleet_actors.adapters.valkey import ValkeyDeadLetterIndex
from fleet_actors.cli.main import main
from fleet_actors.composition import archiver_on, open_dead_letters, open_projection_runner
from fleet_actors.domain.commands import RecordSummary
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.jobs.projection_extensions import projection_rows, remove_projection
from fleet_actors.loadgen.seed import seed
from fleet_actors.projections.runner import ProjectionRunner, verify_projection
from fleet_actors.settings import Settings
from tests.integration.conftest import TEST_POLICY, wait_until, write_story

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def running(settings: Settings, projection, policy=TEST_POLICY) -> AsyncIterator[ProjectionRunner]:
    runner = await open_projection_runner(settings, projection, 0, 1, policy)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await runner.close()


async def caught_up(runner: ProjectionRunner) -> bool:
    assert runner.feed is not None
    return await runner.feed.drained()


async def all_story_ids(store) -> list[str]:
    return sorted(await store.story_ids())


def assert_applied_once(projection: DecisionsByRole, heads: Mapping[str, int]) -> None:
    applied = projection.events_applied()
    assert {s: v for s, (v, _) in applied.items()} == dict(heads)
    assert all(version == count for version, count in applied.values()), "an event was applied twice"


@pytest.mark.parametrize(
    ("old_stories", "new_stories", "events_per_story"),
    [(8, 4, 20), pytest.param(80, 20, 100, marks=pytest.mark.slow, id="10000-events")],
)
async def test_registered_after_archived_history_it_ends_as_a_replay_and_goes_on_live(
    stream_settings: Settings, tmp_path: Path, unique_id, execute, old_stories, new_stories, events_per_story
):
    settings = stream_settings.replace(archive_url=str(tmp_path / "archive"), stream_max_age=2.0)
    tag = unique_id("A")
    await seed(settings, old_stories, events_per_story, prefix=f"{tag}-old")  # archived, then purged
    old_events = old_stories * events_per_story
    stream = await JetStreamEventStore.connect(settings)
    archive = Archive(settings.archive_url, settings.stream_name)
    try:
        archiver = await archiver_on(settings, stream.connection, archive, segment_events=max(40, old_events // 10))
        await archiver.archive_once()
        await asyncio.sleep(settings.stream_max_age + 0.5)
        retention = await archiver.enforce_retention()
        assert retention.purged_through > old_events // 2  # most old events are now only in the archive
        await seed(settings, new_stories, events_per_story, prefix=f"{tag}-new")  # in the stream only
        store = ArchivedEventStore(stream, archive, settings)
        stories = await all_story_ids(store)
        assert len(stories) == old_stories + new_stories

        projection = DecisionsByRole(str(tmp_path / "decisions.db"))
        async with running(settings, projection) as runner:
            assert (
                runner.progress.archive_applied > old_events // 2
                and runner.progress.archive_through == (await archive.manifest()).last_sequence
            )
            await wait_until(lambda: caught_up(runner), timeout=120)
            heads = {s: (await store.read_all(s))[-1].envelope.version for s in stories}
            assert_applied_once(projection, heads)
            assert await verify_projection(projection, store, stories) == {}
            assert projection.per_role() and sum(n for _, n in projection.per_role()) > 0
            # Live: new events arrive without a gap or a duplicate at the seam.
            live = unique_id("L")
            version = await write_story(execute, live)
            await wait_until(lambda: asyncio.sleep(0, projection.events_applied().get(live, (0, 0))[0] == version))
            assert_applied_once(projection, {**heads, live: version})

            async def status_row():
                rows = [r for r in await projection_rows(settings) if r.projection == "decisions-by-role-v1"]
                return rows[0] if len(rows) == 1 and rows[0].applied == sum(heads.values()) + version else None

            await wait_until(status_row)  # progress is published every second
            row = await status_row()
            assert row.phase == "live" and row.parked == 0 and row.remaining == 0 and row.eta_seconds == ""
        # Restarted, it does not read the archive again, and applies nothing twice.
        again = DecisionsByRole(str(tmp_path / "decisions.db"))
        async with running(settings, again) as restarted:
            assert restarted.progress.archive_applied == 0
            await wait_until(lambda: caught_up(restarted))
            assert_applied_once(again, {**heads, live: version})
    finally:
        await stream.close()
    deleted = await remove_projection(settings, "decisions-by-role-v1")
    assert len(deleted) == settings.partitions
    assert not [r for r in await projection_rows(settings) if r.projection == "decisions-by-role-v1"]


class SlowDecisions(DecisionsByRole):
    """Takes its time, so that a kill lands mid-catch-up; tells when it has applied ``enough``."""

    def __init__(self, path: str, enough: int) -> None:
        super().__init__(path)
        self.enough, self.applied = enough, 0
        self.reached = asyncio.Event()

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        await super().apply(batch)
        self.applied += sum(len(events) for events in batch.values())
        if self.applied >= self.enough:
            self.reached.set()
        await asyncio.sleep(0.01)


async def test_killed_mid_catch_up_it_resumes_without_duplicates(stream_settings: Settings, tmp_path: Path, unique_id):
    settings = stream_settings
    await seed(settings, 12, 25, prefix=unique_id("K"))  # 300 events
    db = str(tmp_path / "decisions.db")
    small = TEST_POLICY.__class__(**{**TEST_POLICY.__dict__, "batch_size": 20})

    # 1. In process: cancelled between a committed apply and its acknowledgement.
    slow = SlowDecisions(db, enough=60)
    runner = await open_projection_runner(settings, slow, 0, 1, small)
    task = asyncio.create_task(runner.run(asyncio.Event()))
    await asyncio.wait_for(slow.reached.wait(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await runner.close()

    def applied_now() -> int:
        with contextlib.closing(sqlite3.connect(db)) as connection:
            return connection.execute("SELECT coalesce(sum(events_applied), 0) FROM stories").fetchone()[0]

    assert 0 < applied_now() < 300

    # 2. A separate process, killed with SIGKILL part-way.
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "examples.decisions_by_role", "run", "--db", db, "--batch-size", "1"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        before = applied_now()
        await wait_until(lambda: asyncio.sleep(0, applied_now() > before), timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert applied_now() < 300, "the child finished before it was killed: make the log larger"

    # 3. Resumed: everything exactly once.
    projection = DecisionsByRole(db)
    async with running(settings, projection) as resumed:
        await wait_until(lambda: caught_up(resumed), timeout=60)
        store = await JetStreamEventStore.connect(settings)
        try:
            stories = await all_story_ids(store)
            heads = {s: (await store.read_all(s))[-1].envelope.version for s in stories}
            assert_applied_once(projection, heads)
            assert await verify_projection(projection, store, stories) == {}
        finally:
            await store.close()


class PoisonedOnce:
    """A projection into a dict that cannot take one event (it is in its own checkpoint store: Valkey)."""

    version = 1

    def __init__(self, poison: str) -> None:
        self.name = f"poisoned-{uuid.uuid4().hex[:8]}"
        self.poison = poison
        self.seen: dict[str, list[int]] = {}

    async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
        for events in batch.values():
            if any(e.event_id == self.poison for e in events):
                raise ValueError("cannot project this event")
        for story_id, events in batch.items():
            self.seen.setdefault(story_id, []).extend(e.version for e in events)


async def test_a_poison_event_parks_only_its_story(stream_settings: Settings, execute, unique_id, monkeypatch, capsys):
    settings = stream_settings
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)
    good = [unique_id("G") for _ in range(3)]
    bad = unique_id("B")
    versions = {s: await write_story(execute, s) for s in [*good, bad]}
    store = await JetStreamEventStore.connect(settings)
    try:
        poison = (await store.read_all(bad))[4].envelope  # version 5
        projection = PoisonedOnce(poison.event_id)
        async with running(settings, projection) as runner:
            await wait_until(lambda: runner.dead_letters.held())
            await wait_until(lambda: asyncio.sleep(0, all(projection.seen.get(s) for s in good)))
            await wait_until(lambda: caught_up(runner))
            assert {s: projection.seen[s] for s in good} == {s: list(range(1, versions[s] + 1)) for s in good}
            assert projection.seen.get(bad) == [1, 2, 3, 4]  # up to the poison event, not past it
            held = await runner.dead_letters.held()
            assert list(held) == [bad]
            parked = held[bad]
            assert parked.version == 5 and parked.projection == f"{projection.name}-v1"
            assert parked.consumer.startswith(f"proj-{projection.name}-v1-partition-")
            # The built-in projectors' dead letters are untouched; the operator tools see this one.
            builtin = await ValkeyDeadLetterIndex.connect(settings)
            try:
                assert bad not in await builtin.held()
            finally:
                await builtin.close()
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["dlq", "list", "--projection", f"{projection.name}-v1"]) == 0
            listed = capsys.readouterr().out
            assert bad in listed and f"{projection.name}-v1" in listed and good[0] not in listed
            assert await asyncio.to_thread(main, ["projections", "status"]) == 0
            assert f"{projection.name}-v1" in capsys.readouterr().out
            nc = await connect_nats(settings)
            try:
                dead_letters, index = await open_dead_letters(settings, nc, f"{projection.name}-v1")
                assert list(await dead_letters.held()) == [bad]
                # Later events of the held story are kept back; skip releases it past the poison event.
                await execute(bad, RecordSummary("later"))
                await dead_letters.request_release(bad, "skip")
                await index.close()
            finally:
                await nc.close()
            await wait_until(lambda: asyncio.sleep(0, len(projection.seen.get(bad, [])) == versions[bad] + 1))
            # Version 5 is the stand-in for the skipped event (event type "dlq-skip", no payload).
            assert projection.seen[bad] == list(range(1, versions[bad] + 2))
            assert await runner.dead_letters.held() == {}
    finally:
        await store.close()


@pytest.fixture(autouse=True)
def _quiet_registry():
    from fleet_actors.projections import api

    yield
    api.unregister("decisions-by-role")


async def test_the_example_as_documented(stream_settings: Settings, tmp_path: Path, unique_id, monkeypatch, capsys):
    """seed, `fleet-actors projections run MODULE:ATTRIBUTE --until-caught-up`, query."""
    from examples.decisions_by_role import main as example

    for key, value in stream_settings.as_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    seed_args = ["seed", "--stories", "6", "--events", "20", "--prefix", unique_id("X")]
    assert await asyncio.to_thread(example, seed_args) == 0
    target = "examples.decisions_by_role:DecisionsByRole"
    assert await asyncio.to_thread(main, ["projections", "run", target, "--until-caught-up"]) == 0
    assert "120 events applied" in capsys.readouterr().out
    assert await asyncio.to_thread(example, ["query", "--db", "decisions.db"]) == 0
    per_role = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert per_role and sum(int(count) for _, count in per_role) == len(
        sqlite3.connect("decisions.db").execute("SELECT * FROM decisions").fetchall()
    )


async def test_the_context_documents_rebuilt_as_a_projection_beside_the_live_ones(
    stream_settings: Settings, execute, unique_id
):
    """Version 2 of the documents, on the public API, in its own key space, while the live projector
    keeps writing version 1: both end equal to a replay; the live documents are not touched."""
    from fleet_actors.composition import open_documents_projection
    from tests.integration.conftest import RunningProjectors

    settings = stream_settings
    before = {s: await write_story(execute, s) for s in (unique_id("D") for _ in range(4))}
    live = await RunningProjectors(settings, 1).start()
    try:
        documents = await open_documents_projection(settings, version=2)
        async with running(settings, documents) as runner:
            during = {s: await write_story(execute, s, extra_updates=3) for s in (unique_id("E") for _ in range(2))}
            heads = {**before, **during}

            async def both_there() -> bool:
                v1 = await live.cache.versions(list(heads))
                v2 = await documents.documents.versions(list(heads))
                return v1 == heads and v2 == heads

            await wait_until(both_there, timeout=60)
            await wait_until(lambda: caught_up(runner))
            store = await JetStreamEventStore.connect(settings)
            try:
                assert await verify_projection(documents, store, list(heads)) == {}
            finally:
                await store.close()
            v1_docs = await live.cache.get_many(list(heads))
            v2_docs = await documents.documents.get_many(list(heads))
            assert {s: d.state for s, d in v1_docs.items()} == {s: d.state for s, d in v2_docs.items()}
            assert runner.progress.applied == sum(heads.values())
    finally:
        await live.stop()


#: the staleness this test accepts for a plain (not fresh) read across the switches, in seconds
STALENESS_BOUND = 5.0


async def test_a_blue_green_switch_of_the_documents_under_load(stream_settings: Settings, execute, unique_id):
    """Version 2 of the documents catches up beside version 1 while commands keep coming; readers are
    switched to it and back: no read is staler than the bound, no update is lost, verify passes for
    both versions before and after."""
    from fleet_actors.composition import open_documents_projection, open_read_models
    from fleet_actors.domain.commands import UpdateSubtask
    from fleet_actors.jobs.projection_extensions import switch_documents
    from fleet_actors.jobs.verify import verify
    from tests.integration.conftest import RunningProjectors

    settings = stream_settings
    stories = [unique_id("G") for _ in range(3)]
    heads = {s: await write_story(execute, s) for s in stories}
    acked: list[tuple[float, str, int]] = []  # (monotonic time, story, version) of every acknowledged write
    reads: list[tuple[float, str, int]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            story = stories[i % len(stories)]
            result = await execute(story, UpdateSubtask("T1", "BLOCKED" if (i // 3) % 2 == 0 else "IN_PROGRESS"))
            heads[story] = result.version
            acked.append((loop.time(), story, result.version))
            i += 1
            await asyncio.sleep(0.05)

    live = await RunningProjectors(settings, 1).start()
    read_models = await open_read_models(settings)

    async def projected() -> bool:
        return await live.cache.versions(stories) == heads

    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_until(projected)
        documents = await open_documents_projection(settings, version=2)
        async with running(settings, documents):

            async def reader() -> None:
                while not stop.is_set():
                    for story in stories:
                        view = await read_models.get_context(story)
                        reads.append((loop.time(), story, view.version))
                    await asyncio.sleep(0.02)

            tasks += [asyncio.create_task(writer()), asyncio.create_task(reader())]

            async def switched(version: int) -> bool:
                try:
                    return await switch_documents(settings, version) == []
                except Exception:  # not caught up yet
                    return False

            await asyncio.sleep(1.0)
            # The switch itself verifies version 2 against a replay (up to each document's version).
            await wait_until(lambda: switched(2), timeout=30)
            await asyncio.sleep(1.5)
            assert await switch_documents(settings, 1) == []  # and back
            await asyncio.sleep(1.0)
            await wait_until(lambda: switched(2), timeout=30)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)

            # No update lost: once the writes stop, readers (on version 2) see every story's head.
            async def at_heads() -> bool:
                served = [(await read_models.get_context(s)).version for s in stories]
                return served == [heads[s] for s in stories]

            await wait_until(at_heads, timeout=30)
            store = await JetStreamEventStore.connect(settings)
            try:
                assert await verify_projection(documents, store, stories) == {}
            finally:
                await store.close()
            assert (await verify(settings, stories)).ok
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        from fleet_actors.adapters.valkey import ActiveDocuments

        active = await ActiveDocuments.connect(settings)
        await active.switch(1)
        await active.close()
        await read_models.close()
        await live.stop()

    # Staleness: a read is as stale as the oldest acknowledged write it does not show.
    worst = 0.0
    for at, story, version in reads:
        missed = [t for t, s, v in acked if s == story and v > version and t < at]
        if missed:
            worst = max(worst, at - min(missed))
    print(f"blue/green under load: {len(acked)} writes, {len(reads)} reads, worst staleness {worst:.3f}s")
    assert worst <= STALENESS_BOUND
    assert len(acked) > 20 and len(reads) > 100


async def test_verify_cli_checks_a_projection_of_your_own_through_its_hook(stream_settings: Settings, tmp_path,
                                                                         unique_id):  # fmt: skip
    """`fleet-actors verify --projection MODULE:ATTRIBUTE`: exit 0 when the target equals a replay,
    1 with the differences once a row is lost (run from the directory that holds the SQLite file)."""
    await seed(stream_settings, 3, 30, prefix=unique_id("V"))
    projection = DecisionsByRole(str(tmp_path / "decisions.db"))
    async with running(stream_settings, projection) as runner:
        await wait_until(lambda: caught_up(runner), timeout=60)
    repository = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(stream_settings.as_env(), PYTHONPATH=repository)

    def cli_verify() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "fleet_actors.cli.main", "verify", "--projection",
                "examples.decisions_by_role:DecisionsByRole"]  # fmt: skip
        return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    done = await asyncio.to_thread(cli_verify)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "decisions-by-role-v1: 0 stories differ" in done.stdout
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        db.execute("DELETE FROM decisions WHERE rowid = (SELECT min(rowid) FROM decisions)")
    done = await asyncio.to_thread(cli_verify)
    assert done.returncode == 1 and "1 stories differ" in done.stdout, done.stdout + done.stderr
