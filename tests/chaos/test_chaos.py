"""Chaos: writers retrying by command id while servers and workers are killed; nothing lost or doubled.

A stack of its own (nats-server, valkey-server, ArcadeDB, supervised as `dev up` does) and the
session's Ray runtime. Several writers send commands over several stories, each retried with the
same command id until acknowledged, and record every acknowledgement. Meanwhile nats-server is
SIGKILLed and SIGSTOPped, story, projector and registry workers are SIGKILLed, Valkey and the graph
server are SIGKILLed (the supervisor restarts them). Afterwards the stream is read back message by
message (not through the project's reader) and checked: every acknowledged event is stored at its
version, versions are gap-free, no event id is stored twice, no command is applied twice; once the
projections catch up, `verify` (graph and documents) is clean. The run prints its table.

Bounded by default (about 2-3 minutes here); larger runs: CHAOS_WRITERS, CHAOS_COMMANDS, CHAOS_STORIES.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.js.errors
import pytest
import ray

from fleet_actors import FleetClient
from fleet_actors.actors.naming import story_actor_name
from fleet_actors.actors.projector_actor import projector_actor_name, start_projectors, stop_projectors
from fleet_actors.actors.story_actor import registry_handle
from fleet_actors.codec import decode_event
from fleet_actors.devstack import LocalStack
from fleet_actors.devstack.stack import ServerSupervisor
from fleet_actors.domain.commands import RecordSummary
from fleet_actors.errors import StoryError
from fleet_actors.jobs.verify import verify
from fleet_actors.settings import Settings

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

WRITERS = int(os.environ.get("CHAOS_WRITERS", "3"))
COMMANDS = int(os.environ.get("CHAOS_COMMANDS", "30"))  # per writer, at least
STORIES = int(os.environ.get("CHAOS_STORIES", "6"))
#: how long a writer keeps retrying one command id before it records the command as unacknowledged
RETRY_FOR = 90.0


@dataclass(frozen=True)
class Ack:
    story_id: str
    command_id: str
    version: int
    event_ids: tuple[str, ...]


class Load:
    def __init__(self, client: FleetClient, stories: list[str], writer: int) -> None:
        self.client, self.stories, self.writer = client, stories, writer
        self.acks: list[Ack] = []
        self.unacknowledged: list[str] = []
        self.retries = 0
        self.rng = random.Random(writer)

    def send(self, number: int) -> None:
        story = self.rng.choice(self.stories)
        command_id = f"w{self.writer}-{number}"
        kind = number % 4
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                if kind == 0:
                    result = self.client.apply_changes(
                        story, [RecordSummary(f"{command_id} part {i}") for i in range(3)], command_id=command_id
                    )
                elif kind == 1:
                    result = self.client.add_decision(story, f"decision {command_id}", "why", command_id=command_id)
                elif kind == 2:
                    result = self.client.create_subtask(
                        story, f"T-{command_id}", f"task {command_id}", "dev", command_id=command_id
                    )
                else:
                    result = self.client.record_summary(story, f"summary {command_id}", command_id=command_id)
            except Exception as error:  # a fault: resend the same command id
                if (
                    isinstance(error, StoryError)
                    and not error.retryable
                    and type(error).__name__ != "ConcurrencyConflict"
                ):
                    raise
                self.retries += 1
                if time.monotonic() > deadline:
                    self.unacknowledged.append(command_id)
                    return
                time.sleep(0.2)
                continue
            self.acks.append(Ack(story, command_id, result.version, result.event_ids))
            return


def _worker_pid(handle) -> int:
    return ray.get(handle.__ray_call__.remote(lambda actor: os.getpid()), timeout=10)


class Faults:
    def __init__(self, stack: LocalStack, settings: Settings, stories: list[str]) -> None:
        self.stack, self.settings, self.stories = stack, settings, stories
        self.injected: Counter[str] = Counter()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            schedule = [
                self.kill_story_worker, self.kill_nats, self.kill_projector_worker, self.stop_nats,
                self.kill_registry_worker, self.kill_valkey, self.kill_story_worker, self.kill_graph_server,
                self.kill_nats, self.kill_story_worker,
            ]  # fmt: skip
            for fault in schedule:
                time.sleep(2.0)
                fault()
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def _signal(self, pid: int | None, sig: signal.Signals, name: str) -> None:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                self.injected[name] += 1

    def kill_nats(self) -> None:
        self._signal(self.stack.nats.pid, signal.SIGKILL, "SIGKILL nats-server")

    def stop_nats(self) -> None:
        pid = self.stack.nats.pid
        self._signal(pid, signal.SIGSTOP, "SIGSTOP nats-server (4 s)")
        time.sleep(4.0)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]

    def kill_valkey(self) -> None:
        self._signal(self.stack.valkey.pid, signal.SIGKILL, "SIGKILL valkey-server")

    def kill_graph_server(self) -> None:
        self._signal(self.stack.arcadedb.pid, signal.SIGKILL, "SIGKILL graph server")

    def _kill_actor(self, name: str, what: str) -> None:
        try:
            pid = _worker_pid(ray.get_actor(name, namespace=self.settings.ray_namespace))
        except (ValueError, ray.exceptions.RayError):
            return  # not live right now
        self._signal(pid, signal.SIGKILL, what)

    def kill_story_worker(self) -> None:
        self._kill_actor(story_actor_name(random.choice(self.stories)), "SIGKILL story worker")

    def kill_projector_worker(self) -> None:
        self._kill_actor(projector_actor_name(0, self.settings.projectors), "SIGKILL projector worker")

    def kill_registry_worker(self) -> None:
        registry_handle(self.settings)  # make sure it exists
        self._kill_actor("fleet:story-registry", "SIGKILL registry worker")


async def read_back(settings: Settings) -> list:
    """Every event in the stream, message by message by sequence (not the project's reader)."""
    nc = await nats.connect(settings.nats_url)
    try:
        jsm = nc.jsm(timeout=10)
        info = await jsm.stream_info(settings.stream_name)
        events = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await jsm.get_msg(settings.stream_name, sequence)
            except nats.js.errors.NotFoundError:
                continue
            events.append(decode_event(msg.data))
        return events
    finally:
        await nc.close()


async def verified(settings: Settings, stories: list[str], timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            report = await verify(settings, stories)
            if report.ok or time.monotonic() > deadline:
                return report
        except StoryError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(1.0)


def test_nothing_acknowledged_is_lost_and_nothing_is_applied_twice_under_faults(ray_runtime, tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack", ray=False).start()
    stopping = threading.Event()
    supervisor = ServerSupervisor(
        [stack.nats, stack.valkey, stack.arcadedb], backoff=(0.0, 0.5, 1.0, 2.0, 4.0), log=lambda line: None
    )
    watcher = threading.Thread(target=supervisor.run, args=(stopping, 0.2), daemon=True)
    watcher.start()
    settings = stack.settings(Settings(ray_namespace=f"chaos-{uuid.uuid4().hex[:8]}")).replace(
        nats_timeout=2.0, projectors=2
    )
    stories = [f"chaos-{i}-{uuid.uuid4().hex[:6]}" for i in range(STORIES)]
    try:
        client = FleetClient(settings)
        for story in stories:
            client.create_story(story, f"story {story}", command_id=f"create-{story}")
        start_projectors(settings)
        faults = Faults(stack, settings, stories)
        loads = [Load(FleetClient(settings), stories, writer) for writer in range(WRITERS)]

        def write(load: Load) -> None:
            number = 0
            while number < COMMANDS or not faults.done.is_set():
                load.send(number)
                number += 1

        threads = [threading.Thread(target=write, args=(load,)) for load in loads]
        fault_thread = threading.Thread(target=faults.run)
        for thread in [*threads, fault_thread]:
            thread.start()
        for thread in [*threads, fault_thread]:
            thread.join()
        assert faults.error is None, faults.error

        events = asyncio.run(read_back(settings))
        report = asyncio.run(verified(settings, stories))
    finally:
        with contextlib.suppress(Exception):
            stop_projectors(settings)
        for story in stories:
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(story_actor_name(story), namespace=settings.ray_namespace))
        with contextlib.suppress(Exception):
            ray.kill(registry_handle(settings))
        stopping.set()
        watcher.join(10)
        stack.stop()

    acks = [ack for load in loads for ack in load.acks]
    unacknowledged = [command_id for load in loads for command_id in load.unacknowledged]
    by_story: dict[str, list] = defaultdict(list)
    for event in events:
        by_story[event.story_id].append(event)
    stored = {(e.story_id, e.version): e for e in events}
    lost = [
        ack
        for ack in acks
        if [
            getattr(stored.get((ack.story_id, v)), "event_id", None)
            for v in range(ack.version - len(ack.event_ids) + 1, ack.version + 1)
        ]
        != list(ack.event_ids)
    ]
    gaps = {
        s: [e.version for e in es]
        for s, es in by_story.items()
        if [e.version for e in es] != list(range(1, len(es) + 1))
    }
    twice_ids = [i for i, n in Counter(e.event_id for e in events).items() if n > 1]
    runs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event in events:
        runs[(event.story_id, event.command_id)].append(event.version)
    expected_size = {ack.command_id: len(ack.event_ids) for ack in acks}
    applied_twice = [
        key
        for key, versions in runs.items()
        if versions != list(range(versions[0], versions[0] + len(versions)))
        or len(versions) != expected_size.get(key[1], len(versions))
        or (not key[1].startswith("create-") and len(versions) not in (1, 3))
    ]
    table = [
        ("faults injected", sum(faults.injected.values())),
        *((f"  {kind}", count) for kind, count in sorted(faults.injected.items())),
        ("commands acknowledged", len(acks)),
        ("commands unacknowledged (gave up)", len(unacknowledged)),
        ("retries by the same command id", sum(load.retries for load in loads)),
        ("events acknowledged", sum(len(a.event_ids) for a in acks)),
        ("events stored", len(events)),
        ("lost (acknowledged, not stored)", len(lost)),
        ("applied twice", len(applied_twice)),
        ("verify differences", len(report.differences)),
    ]
    print("\n".join(["", "chaos run:", *(f"  {name:<38} {value}" for name, value in table)]))
    assert not lost and not gaps and not twice_ids and not applied_twice
    assert report.ok, report.differences[:20]
    assert len(acks) >= WRITERS * COMMANDS * 0.9
    assert {"SIGKILL nats-server", "SIGKILL story worker", "SIGKILL valkey-server", "SIGKILL graph server"} <= set(
        faults.injected
    )
