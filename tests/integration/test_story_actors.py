"""Story actors on a real Ray runtime with a real nats-server, through the public client."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from types import SimpleNamespace

import pytest
import ray

from fleet_actors import ConcurrencyConflict, FleetClient, InvalidCommand, RuleViolation, StoryNotFound
from fleet_actors.actors import spare_workers
from fleet_actors.actors.naming import live_story_ids, story_actor_name
from fleet_actors.actors.story_actor import registry_handle
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.devstack import NatsServer
from fleet_actors.domain.commands import CreateStory, CreateSubtask, RecordSummary
from fleet_actors.errors import Retryable
from fleet_actors.settings import Settings


def new_story() -> str:
    return "S" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def client(ray_runtime, settings):
    return FleetClient(settings)


async def stored_versions(settings, story_id):
    store = await JetStreamEventStore.connect(settings)
    try:
        return [e.envelope.version for e in await store.read_all(story_id)]
    finally:
        await store.close()


def passivate(story_id: str, settings: Settings) -> None:
    with contextlib.suppress(ray.exceptions.RayActorError):  # it exits while answering
        ray.get(ray.get_actor(story_actor_name(story_id), namespace=settings.ray_namespace).passivate.remote())


def test_story_life_cycle(client):
    sid = new_story()
    assert client.create_story(sid, "Login page", "OAuth login").version == 1
    client.create_subtask(sid, "T1", "Form", "dev")
    client.create_subtask(sid, "T2", "API", "dev", dependencies=["T1"], priority=1)
    decision = client.add_decision(sid, "Use JWT", "stateless sessions", alternatives="server sessions")
    client.record_impact(sid, decision.decision_id, "T2")
    client.update_subtask(sid, "T1", "IN_PROGRESS")
    result = client.transition_phase(sid, "BUILD")
    state = client.get_story(sid)
    assert (state.version, state.phase, sorted(state.subtasks)) == (result.version, "BUILD", ["T1", "T2"])
    assert state.decisions[decision.decision_id].title == "Use JWT"
    history = client.history(sid)
    assert [e.version for e in history] == list(range(1, result.version + 1))
    assert history[0].event_type == "context_created" and history[-1].event_type == "phase_transitioned"


def test_bad_input_gives_typed_errors_and_appends_nothing(client, settings):
    sid = new_story()
    client.create_story(sid, "t")
    for call, error in [
        (lambda: client.create_story("bad id", "t"), InvalidCommand),
        (lambda: client.create_story(sid + "." + "x", "t"), InvalidCommand),
        (lambda: client.create_subtask(sid, "T1", "x" * 500, "dev"), InvalidCommand),
        (lambda: client.update_subtask(sid, "T9", "DONE"), RuleViolation),
        (lambda: client.transition_phase(sid, "DOCS"), RuleViolation),
        (lambda: client.create_subtask(new_story(), "T1", "x", "dev"), StoryNotFound),
        (lambda: client.get_story(new_story()), StoryNotFound),
    ]:
        with pytest.raises(error):
            call()
    assert asyncio.run(stored_versions(settings, sid)) == [1]


def test_an_unknown_story_is_not_found_without_activating_an_actor(client, settings):
    sid = new_story()
    for call in [
        lambda: client.get_story(sid),
        lambda: client.history(sid),
        lambda: client.get_story_at(sid, 1),
        lambda: client.rebuild_state(sid),
        lambda: client.record_summary(sid, "note"),
        lambda: client.apply_changes(sid, [CreateSubtask("T1", "x", "dev")]),
        lambda: asyncio.run(client.aio.get_story(sid)),
    ]:
        with pytest.raises(StoryNotFound):
            call()
    assert sid not in live_story_ids(settings)
    assert asyncio.run(stored_versions(settings, sid)) == []
    # A creation activates it, also inside a batch of changes.
    assert client.create_story(sid, "t").version == 1
    batched = new_story()
    result = asyncio.run(client.aio.apply_changes(batched, [CreateStory("t"), CreateSubtask("T1", "x", "dev")]))
    assert result.version == 2 and batched in live_story_ids(settings)


def test_resent_command_id_appends_nothing(client, settings):
    sid = new_story()
    client.create_story(sid, "t", command_id="create-1")
    first = client.add_decision(sid, "JWT", "stateless", command_id="decide-1")
    again = client.add_decision(sid, "JWT", "stateless", command_id="decide-1")
    assert again.duplicate and again.decision_id == first.decision_id and again.version == first.version == 2
    assert asyncio.run(stored_versions(settings, sid)) == [1, 2]


def test_an_empty_command_id_is_refused_not_taken_as_a_key_that_never_matches(client, settings):
    sid = new_story()
    client.create_story(sid, "t")
    for _ in range(2):  # it appended twice: "" became a fresh id each time
        with pytest.raises(InvalidCommand) as refused:
            client.record_summary(sid, "note", command_id="")
        assert refused.value.field == "command_id"
        with pytest.raises(InvalidCommand):
            asyncio.run(client.aio.record_summary(sid, "note", command_id=""))
    assert asyncio.run(stored_versions(settings, sid)) == [1]


def test_invalid_commands_start_no_story_actor(client, settings):
    # 17 CreateStory calls with an empty title once left 17 live actors (~75 MB each) counting
    # against the live cap: validation that needs no state runs before activation.
    calls = [
        lambda sid: client.create_story(sid, ""),
        lambda sid: client.create_story(sid, "t", initial_phase="LAUNCH"),
        lambda sid: client.create_story(sid, "t", description="x" * 10_001),
        lambda sid: client.create_story(sid, "t", actor="a\x00b"),
        lambda sid: client.create_story(sid, "t", expected_version=-1),
        lambda sid: client.apply_changes(sid, [CreateStory("t"), CreateSubtask("a b", "x", "dev")]),
        lambda sid: asyncio.run(client.aio.create_story(sid, " ")),
    ]
    stories = [new_story() for _ in calls]
    for sid, call in zip(stories, calls, strict=True):
        with pytest.raises(InvalidCommand):
            call(sid)
    assert set(stories).isdisjoint(live_story_ids(settings))
    assert all(asyncio.run(stored_versions(settings, sid)) == [] for sid in stories)


def test_the_actor_field_is_bounded_and_validated_like_every_other(client, settings):
    sid = new_story()
    client.create_story(sid, "t", actor="x" * 64)
    # 2 MB once came back as BackendUnavailable (retryable: a client following the contract retried
    # forever); 100,000 characters and NUL characters were stored.
    for actor in ["x" * 2_000_000, "x" * 100_000, "x" * 65, "agent\x00", "tab\tbed"]:
        with pytest.raises(InvalidCommand) as refused:
            client.record_summary(sid, "note", actor=actor)
        assert refused.value.field == "actor" and not refused.value.retryable
    assert [e.actor for e in client.history(sid)] == ["x" * 64]


def test_malformed_values_are_invalid_naming_the_field_and_append_nothing(client, settings):
    sid = new_story()
    client.create_story(sid, "t")
    for call, field in [
        (lambda: client.record_summary(sid, "x", expected_version=-1), "expected_version"),
        (lambda: client.record_summary(sid, "x", expected_version=float("nan")), "expected_version"),
        (lambda: client.record_summary(sid, "x", expected_version=1.5), "expected_version"),
        (lambda: client.record_summary(sid, "x", expected_version="3"), "expected_version"),
        (lambda: client.create_subtask(sid, "T1", "bad \ud800 title", "dev"), "title"),
        (lambda: client.add_decision(sid, "t", "r", metadata={"k": "\udfff"}), "metadata[k]"),
        (lambda: client.create_subtask(sid, "T1", "x", "dev", dependencies="abc"), "dependencies"),
        (lambda: client.create_subtask(sid, "T1", "x", "dev", dependencies=7), "dependencies"),
        (lambda: client.create_subtask(sid, "T1", "x", "dev", priority=1.5), "priority"),
        (lambda: client.add_decision(sid, "t", "r", metadata="abc"), "metadata"),
    ]:
        with pytest.raises(InvalidCommand) as refused:
            call()
        assert refused.value.field == field
    assert asyncio.run(stored_versions(settings, sid)) == [1]


def test_get_story_is_not_older_than_the_log_after_another_writer_appended(client, settings):
    # The importer writes through the store, not the actor: the actor answered version 14 while the
    # log was at 54, until its next command.
    sid = new_story()
    client.create_story(sid, "t")
    assert client.get_story(sid).version == 1

    async def another_writer():
        store = await JetStreamEventStore.connect(settings)
        try:
            writer = StoryRuntime(sid, store)
            for i in range(40):
                await writer.execute(CommandRequest(sid, RecordSummary(f"imported {i}"), f"import-{i}"))
        finally:
            await store.close()

    asyncio.run(another_writer())
    state = client.get_story(sid)
    assert (state.version, state.last_summary) == (41, "imported 39")
    assert asyncio.run(client.aio.get_story(sid)).version == 41
    assert client.record_summary(sid, "after", expected_version=41).version == 42


def test_reads_in_the_caller_answer_as_the_story_actor_does(client, settings):
    sid = new_story()
    client.create_story(sid, "t")
    for i in range(12):
        client.create_subtask(sid, f"T{i}", f"task {i}", "dev")
    client.update_subtask(sid, "T3", "IN_PROGRESS")
    through_actor = FleetClient(settings.replace(direct_reads=False))
    try:
        assert client.history(sid) == through_actor.history(sid)
        assert client.history(sid, 5, 3) == through_actor.history(sid, 5, 3)
        stamp = client.history(sid)[6].timestamp
        for at in (1, 7, 14, stamp):
            assert client.get_story_at(sid, at) == through_actor.get_story_at(sid, at)
        assert client.get_story(sid) == through_actor.get_story(sid)
        assert asyncio.run(client.aio.history(sid, 2, 2)) == through_actor.history(sid, 2, 2)
    finally:
        through_actor.close()


def test_twenty_concurrent_writers_with_the_same_expected_version(client, settings):
    sid = new_story()
    client.create_story(sid, "t")

    async def race():
        return await asyncio.gather(
            *(client.aio.record_summary(sid, f"writer {i}", expected_version=1) for i in range(20)),
            return_exceptions=True,
        )

    results = asyncio.run(race())
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConcurrencyConflict) for r in results if isinstance(r, Exception))
    assert asyncio.run(stored_versions(settings, sid)) == [1, 2]


def test_killed_actor_comes_back_with_the_same_state(client, settings):
    sid = new_story()
    client.create_story(sid, "t")
    client.create_subtask(sid, "T1", "Form", "dev")
    before = client.get_story(sid)
    ray.kill(ray.get_actor(story_actor_name(sid), namespace=settings.ray_namespace))
    after = client.get_story(sid)
    assert after == before
    assert client.update_subtask(sid, "T1", "IN_PROGRESS").version == 3


@pytest.mark.slow
def test_a_killed_actor_still_recognises_a_command_id_older_than_its_snapshot_carries(client, settings):
    # The fault campaign's case: after 1,150 command ids, c5 was appended again once the story's
    # worker had been killed (its snapshot carried the last 1,000 results only).
    sid = new_story()
    client.create_story(sid, "t")

    async def send_all():
        for i in range(1150):
            await client.aio.record_summary(sid, f"s{i}", command_id=f"c{i}")

    asyncio.run(send_all())
    assert client.record_summary(sid, "s5", command_id="c5").duplicate
    ray.kill(ray.get_actor(story_actor_name(sid), namespace=settings.ray_namespace))
    again = client.record_summary(sid, "s5", command_id="c5")
    assert again.duplicate and again.version == 7
    assert len(asyncio.run(stored_versions(settings, sid))) == 1151


def test_passivated_actor_comes_back_with_the_same_state(client, settings):
    sid = new_story()
    client.create_story(sid, "t")
    client.add_decision(sid, "JWT", "stateless")
    before = client.get_story(sid)
    handle = ray.get_actor(story_actor_name(sid), namespace=settings.ray_namespace)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(handle.passivate.remote())
    assert sid not in live_story_ids(settings)
    assert client.get_story(sid) == before


def test_idle_actors_passivate_and_the_live_cap_holds(ray_runtime, settings):
    capped = settings.replace(max_live_stories=3, actor_idle_seconds=4, ray_namespace="cap-" + uuid.uuid4().hex[:6])
    client = FleetClient(capped)
    stories = [new_story() for _ in range(6)]
    for sid in stories:
        client.create_story(sid, "t")
    deadline = time.monotonic() + 10
    while len(live_story_ids(capped)) > 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(live_story_ids(capped)) <= 3
    # Passivation is invisible to callers: every story still answers.
    assert all(client.get_story(sid).version == 1 for sid in stories)
    deadline = time.monotonic() + 15
    while live_story_ids(capped) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_story_ids(capped) == []


def test_the_live_cap_holds_across_a_registry_restart(ray_runtime, settings):
    # Ray restarts a crashed registry with empty state: it must adopt the story actors already live.
    capped = settings.replace(max_live_stories=3, ray_namespace="cap-" + uuid.uuid4().hex[:6])
    client = FleetClient(capped)
    stories = [new_story() for _ in range(4)]
    for sid in stories[:3]:
        client.create_story(sid, "t")
    ray.kill(registry_handle(capped), no_restart=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(ray.exceptions.RayActorError):
            if len(ray.get(registry_handle(capped).live_stories.remote())) == 3:
                break
        time.sleep(0.2)
    client.create_story(stories[3], "t")
    deadline = time.monotonic() + 10
    while len(live_story_ids(capped)) > 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(live_story_ids(capped)) == 3 and stories[3] in live_story_ids(capped)
    for sid in live_story_ids(capped):
        passivate(sid, capped)


def test_a_registry_lost_during_the_lookup_is_retried(client, settings, monkeypatch):
    sid = new_story()
    client.create_story(sid, "t")
    passivate(sid, settings)
    client.close()  # forget the handle: the next call asks the registry whether the story exists
    lookups = []

    def story_exists(*args):  # the registry dies with the first lookup in flight, then is back
        lookups.append(args)
        if len(lookups) == 1:
            raise ray.exceptions.RayActorError()
        return ray.put(True)

    registry = SimpleNamespace(story_exists=SimpleNamespace(remote=story_exists))
    monkeypatch.setattr(client, "_registry", lambda: registry)
    assert client.get_story(sid).version == 1
    assert len(lookups) == 2


def test_story_actors_reserve_the_configured_memory_while_live(ray_runtime, settings):
    reserving = settings.replace(story_actor_memory_mb=1024, ray_namespace="mem-" + uuid.uuid4().hex[:6])

    def reserved_gib() -> float:
        # Only this test's actor reserves memory; other tests' actors come and go with none.
        return (ray.cluster_resources().get("memory", 0) - ray.available_resources().get("memory", 0)) / 2**30

    before = reserved_gib()
    sid = new_story()
    FleetClient(reserving).create_story(sid, "t")
    deadline = time.monotonic() + 10
    while reserved_gib() - before < 0.99 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reserved_gib() - before == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(ray.get_actor(story_actor_name(sid), namespace=reserving.ray_namespace).passivate.remote())
    deadline = time.monotonic() + 10
    while reserved_gib() - before > 0.01 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reserved_gib() - before == pytest.approx(0.0, abs=0.01)


async def test_async_twin(ray_runtime, settings):
    client = FleetClient(settings).aio
    sid = new_story()
    created = await client.create_story(sid, "t")
    assert created.version == 1 and (await client.get_story(sid)).title == "t"


def test_warm_actor_keeps_working_when_nats_restarts(client, settings, local_stack):
    # The actor's loop only runs during calls and idle keep-alives: the reconnect must still happen.
    sid = new_story()
    client.create_story(sid, "t")
    local_stack.nats.restart()
    command_id = "restart-" + uuid.uuid4().hex[:8]
    deadline = time.monotonic() + 20
    while True:
        try:
            result = client.record_summary(sid, "after the restart", command_id=command_id)
            break
        except Exception:  # unavailable while the server comes back; resending the command id is safe
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert result.version == 2
    assert asyncio.run(stored_versions(settings, sid)) == [1, 2]


def test_commands_during_a_long_nats_outage_fail_typed_and_succeed_after_it(ray_runtime, settings, local_stack):
    # Longer than a request's timeout (short here: each of the append's attempts waits that long): the
    # command comes back as a retryable error, neither hanging nor surfacing nats-py's exception, and
    # the same command id lands exactly once afterwards.
    quick = settings.replace(nats_timeout=1.0)
    client, sid = FleetClient(quick), new_story()
    client.create_story(sid, "t")
    command_id = "outage-" + uuid.uuid4().hex[:8]
    local_stack.nats.kill()
    try:
        started = time.monotonic()
        with pytest.raises(Retryable):
            client.record_summary(sid, "during the outage", command_id=command_id)
        assert time.monotonic() - started < 10 * quick.nats_timeout
    finally:
        local_stack.nats.start().wait_ready()
    deadline = time.monotonic() + 20
    while True:
        try:
            result = client.record_summary(sid, "during the outage", command_id=command_id)
            break
        except Retryable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert result.version == 2
    assert asyncio.run(stored_versions(settings, sid)) == [1, 2]


def test_idle_actor_answers_server_pings_between_calls(ray_runtime, settings, tmp_path):
    # The server pings every 3 s and drops a client after two unanswered pings; the actor's loop only
    # runs during calls, so without the idle keep-alive this connection would be cut and re-made.
    server = NatsServer(tmp_path / "nats", ping_interval="3s").start().wait_ready()
    pinged = settings.replace(
        nats_url=server.url, actor_idle_seconds=30, actor_keep_alive_seconds=1.0,
        ray_namespace="ping-" + uuid.uuid4().hex[:6],
    )  # fmt: skip
    client = FleetClient(pinged)
    sid = new_story()
    try:
        client.create_story(sid, "t")
        time.sleep(15)
        assert client.record_summary(sid, "after a quiet spell").version == 2
        handle = ray.get_actor(story_actor_name(sid), namespace=pinged.ray_namespace)
        stats = ray.get(handle.__ray_call__.remote(lambda actor: dict(actor._host._store.connection.stats)))
        assert stats["reconnects"] == 0
    finally:
        with contextlib.suppress(Exception):
            handle = ray.get_actor(story_actor_name(sid), namespace=pinged.ray_namespace)
            ray.get(handle.passivate.remote())
        server.stop()


def _idle_workers() -> set[int]:
    """This session's idle Ray workers (the raylet's children that wait for work)."""
    import psutil

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    idle = set()
    for child in psutil.Process(raylet).children():
        with contextlib.suppress(psutil.Error):
            if child.cmdline()[:1] == ["ray::IDLE"]:
                idle.add(child.pid)
    return idle


@ray.remote(num_cpus=0)
class _WorkerReadiness:
    # an actor, not a task: a worker that ran a task stays idle afterwards, and Ray never places an
    # actor on it (the spare-worker test below would count it as a spare)
    def check(self) -> tuple[int, bool, bool]:
        import gc
        import sys

        return gc.get_freeze_count(), "fleet_actors.actors.story_actor" in sys.modules, "pydantic" in sys.modules


def test_workers_start_with_the_story_actor_code_and_their_imports_frozen(ray_runtime):
    # actors/preload.py, run by every worker as it starts: a story activating on a spare neither
    # imports our code nor Ray's first-task modules, and its first snapshot decode does not walk
    # every imported object in a full collection
    actor = _WorkerReadiness.remote()
    try:
        frozen, story_code, ray_first_task = ray.get(actor.check.remote())
    finally:
        ray.kill(actor)
    assert frozen > 10_000 and story_code and ray_first_task


def test_a_passivated_story_comes_back_on_a_spare_worker(client, settings):
    # actors/spare_workers.py: the raylet takes the request on this Ray version, and a story that
    # re-activates once a spare is idle starts on it (no process start) with the same state.
    sid = new_story()
    client.create_story(sid, "t")  # the client asks for spares (or for a replacement)
    client.add_decision(sid, "JWT", "stateless")
    before = client.get_story(sid)
    assert spare_workers.prestart(1)
    passivate(sid, settings)
    deadline = time.monotonic() + 60
    while not _idle_workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    idle = _idle_workers()
    # through the actor: get_story would answer from the client's own copy of the live state
    assert client.rebuild_state(sid) == before
    actor = ray.get_actor(story_actor_name(sid), namespace=settings.ray_namespace)
    assert ray._private.state.actors(actor._actor_id.hex())["Pid"] in idle
