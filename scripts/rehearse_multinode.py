#!/usr/bin/env python3
"""Multi-node failure rehearsal on one machine (opt-in; heavy: run it when the machine is quiet).

Starts, all on 127.0.0.1 and in a temporary folder:

- a 3-node JetStream cluster (``fleet_actors.devstack.nats_cluster``) with every stream at R3
  (``FLEET_STREAM_REPLICAS=3``) and ``sync_interval: always``, and the local stack's NATS identities
  per role (``fleet_actors.devstack.credentials``: generated passwords, the same permissions);
- Valkey and ArcadeDB (single, as in ``dev up``), with generated passwords;
- a Ray head and a second Ray node (``ray start --address ... --block``, its own ports and temp
  dir), token authentication as in ``fleet_actors.devstack``;
- the projector pool (``fleet-actors projections start``) and the gRPC gateway joined through
  Ray Client (``ray://``), the way deploy/base runs it.

Every component connects to NATS as its role, as in ``dev up``: ``admin`` declares the streams, the
projectors connect as ``projector``, the gateway as ``gateway``, the story actors (created by this
script's client) as ``story``, ``projections status`` and ``verify`` as ``operator``.

Then it drives commands through ``FleetClient`` (its asyncio API) for ``--duration`` seconds and,
mid-load, SIGKILLs the nats-server that leads the event stream (restarting it a few seconds
later) and the whole second Ray node. Each command has its own command id and is retried with
that id while the error is retryable, as a real caller would. At the end it checks:

1. no acknowledged event lost: every acknowledged command's events are in the log at the
   acknowledged versions, each story's log is gap-free, and nothing is stored twice;
2. the story actors that lived on the killed node answered again, from another node;
3. the projections caught up (``wait_for_projection`` to each story's last version; lag 0);
4. ``fleet-actors verify`` is clean (exit 0);
5. the restarted nats-server is a current replica of the stream again;
6. the gateway still reports SERVING on grpc.health.v1 (what the Kubernetes probes ask);
7. least privilege: no component is connected as ``admin`` and the projectors are connected as
   ``projector``; the projector's identity trying to edit, purge or delete the event stream (or to
   create a stream) is refused, and the stream is unchanged.

Prints a summary (and ``--json FILE`` writes it); exit status 0 only if every check passed.
Every process it starts is stopped by pid at the end, also on failure, Ctrl-C or SIGTERM.

    RAY_USAGE_STATS_ENABLED=0 .venv/bin/python scripts/rehearse_multinode.py --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

# Ray reads RAY_AUTH_MODE when it is imported (fleet_actors.client imports it): set it first.
# The token file is the head's, created when the head starts; see _start_ray.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fleet_actors.devstack.credentials import StackCredentials, nats_identity_settings, nats_permissions
from fleet_actors.devstack.nats_cluster import NatsCluster
from fleet_actors.devstack.process import LOOPBACK, ManagedServer
from fleet_actors.devstack.ray_head import RayHead
from fleet_actors.devstack.ray_worker import RayWorkerNode, distinct_free_ports
from fleet_actors.devstack.role_probe import REFUSED, attempt_stream_administration
from fleet_actors.devstack.servers import ArcadeDBServer, ValkeyServer, _http_status
from fleet_actors.devstack.services import GatewayProcess
from fleet_actors.settings import Settings
from fleet_actors.urls import redact_url

CLI = [sys.executable, "-m", "fleet_actors.cli.main"]
#: how long one command may keep failing with retryable errors before it counts as failed
RETRY_WINDOW = 120.0
#: per-story command cycle: a subtask, its start, a decision
ROLES = ("DEVELOPER", "ARCHITECT", "QA")


class Interrupted(Exception):
    """SIGTERM, SIGINT or the --max-seconds watchdog: stop everything and exit non-zero."""


@dataclass
class Ack:
    story_id: str
    command_id: str
    version: int
    event_ids: tuple[str, ...]
    sent: float
    acked: float
    attempts: int


@dataclass
class Report:
    stories: int = 0
    commands_acked: int = 0
    commands_failed: int = 0
    commands_retried: int = 0
    events_acked: int = 0
    events_in_log: int = 0
    load_seconds: float = 0.0
    commands_per_s: float = 0.0
    #: slowest command under load, and slowest of those in flight when each fault struck
    max_command_s: float = 0.0
    stall_nats_kill_s: float = 0.0
    stall_ray_kill_s: float = 0.0
    nats_killed: str = ""
    nats_new_leader: str = ""
    nats_election_s: float = 0.0
    nats_restarted_current_s: float = 0.0
    ray_node_killed: str = ""
    actors_on_killed_node: list[str] = field(default_factory=list)
    reactivated_elsewhere: list[str] = field(default_factory=list)
    projectors_before: dict[str, str] = field(default_factory=dict)
    projectors_after: dict[str, str] = field(default_factory=dict)
    #: seconds from the node kill until every story of that node had answered a new command
    all_lost_stories_served_s: float = 0.0
    projection_catch_up_s: float = 0.0
    gateway_health: dict[str, str] = field(default_factory=dict)
    #: NATS user -> names of its live client connections, after the load
    nats_connections: dict[str, list[str]] = field(default_factory=dict)
    #: what the projector's identity got for each stream administration attempt (all "refused")
    projector_stream_admin: dict[str, str] = field(default_factory=dict)
    verify_exit: int | None = None
    verify_output: str = ""
    checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(report: Report, name: str) -> Iterator[None]:
    started = time.monotonic()
    log(f"{name} ...")
    try:
        yield
    finally:
        report.phases_s[name] = round(time.monotonic() - started, 1)


class Rehearsal:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.report = Report(stories=args.stories)
        # the local stack's credentials and NATS roles (nothing of them on a command line or in a log)
        self.credentials = StackCredentials.load_or_create(root / "credentials", graph_default="")
        self.nats = NatsCluster(
            root / "nats",
            3,
            cluster_name="fleet-rehearsal",
            users=self.credentials.nats,
            client_user="admin",
            permissions=nats_permissions(),
        )
        # all different (separate free_port() calls may repeat a port that is not bound yet)
        ports = distinct_free_ports(7)
        self.valkey = ValkeyServer(root / "valkey", ports[0], password=self.credentials.valkey)
        self.arcadedb = ArcadeDBServer(
            root / "arcadedb", ports[1], http_port=ports[2], heap="512m", password=self.credentials.graph
        )
        self.head = RayHead(
            root / "ray-head",
            ports[3],
            num_cpus=1,
            dashboard_port=ports[4],
            client_server_port=ports[5],
            dashboard_agent_port=ports[6],
        )
        self.worker = RayWorkerNode(root / "ray-worker", self.head, num_cpus=1)
        #: the admin's settings: declaring the streams, reading the log back, the checks
        self.settings = Settings(
            nats_url=self.nats.url,
            valkey_url=self.valkey.url,
            neo4j_uri=self.arcadedb.url,
            neo4j_user=self.arcadedb.user,
            neo4j_password=self.arcadedb.password,
            neo4j_database=self.arcadedb.database,
            ray_address=self.head.address,
            ray_namespace="rehearsal",
            stream_replicas=3,
            projectors=2,
            data_dir=str(root),
        )
        self.acks: list[Ack] = []
        self.failures: list[str] = []
        self.ray_kill_at = 0.0
        self.nats_kill_at = 0.0
        self.gateway: GatewayProcess | None = None

    # -- processes ------------------------------------------------------------------------

    def servers(self) -> list[ManagedServer]:
        return [*self.nats.nodes, self.valkey, self.arcadedb, self.head, self.worker]

    def role(self, role: str) -> Settings:
        """The settings, connecting to NATS as ``role`` (credentials.NATS_ROLES) instead of the admin."""
        return nats_identity_settings(self.settings, self.nats.address, self.nats.users, role)

    def env(self, role: str) -> dict[str, str]:
        """What a CLI subprocess running as ``role`` needs: every FLEET_* setting plus the head's RAY_*."""
        return {**os.environ, **self.role(role).as_env(), **self.head.env(), "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self) -> None:
        report = self.report
        with phase(report, "start 3 nats-servers (R3, sync always), Valkey, ArcadeDB, Ray head"):
            for server in (self.valkey, self.arcadedb, self.head):
                server.start()
            self.nats.start(timeout=60)
            for server in (self.valkey, self.arcadedb, self.head):
                server.wait_ready(180)
        with phase(report, "start the second Ray node"):
            self.worker.start().wait_ready(180)
        # Ray serves its metrics on every interface without the token: off on both nodes, as in dev up
        open_metrics = {
            port: _http_status(f"http://{LOOPBACK}:{port}/metrics")
            for port in (self.head.metrics_export_port, self.worker.metrics_port)
        }
        report.checks["no Ray metrics endpoint open (every interface, no token)"] = 200 not in open_metrics.values()
        os.environ.update(self.head.env())
        with phase(report, "declare the streams (admin)"):
            from fleet_actors.adapters.jetstream.bootstrap import declare_streams

            asyncio.run(declare_streams(self.settings))
        with phase(report, "fleet-actors projections start (projector)"):
            done = subprocess.run(
                [*CLI, "projections", "start"], env=self.env("projector"), capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                raise RuntimeError(f"projections start failed: {done.stderr.strip()[-1500:]}")
        with phase(report, "fleet-actors gateway (gateway) through Ray Client (as deploy/base runs it)"):
            client_env = {**self.env("gateway"), "RAY_ADDRESS": f"ray://{LOOPBACK}:{self.head.client_server_port}"}
            self.gateway = GatewayProcess(client_env, f"{LOOPBACK}:0").start(timeout=300)
        log(
            f"nats: {redact_url(self.nats.url)}; ray head {self.head.address}; second node {self.worker.node_id}; "
            f"gateway {self.gateway.address}"
        )

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()  # by its pid: SIGTERM (it drains), SIGKILL after the grace
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
        # the worker first: stopping the head while the node lives makes it wait for the GCS
        for server in [self.worker, self.head, self.arcadedb, self.valkey]:
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                log(f"stopping {server.name} failed: {error}")
        self.nats.stop()

    # -- load -------------------------------------------------------------------------------

    async def command(self, client: Any, story_id: str, method: str, *args: Any) -> None:
        from fleet_actors.application.ids import new_id
        from fleet_actors.errors import StoryError

        command_id = new_id()
        sent = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                result = await getattr(client.aio, method)(story_id, *args, command_id=command_id)
                break
            except StoryError as error:
                if not error.retryable or time.monotonic() - sent > RETRY_WINDOW:
                    self.failures.append(f"{story_id} {method}: {type(error).__name__}: {error}")
                    return
                await asyncio.sleep(0.25)
        self.acks.append(
            Ack(story_id, command_id, result.version, tuple(result.event_ids), sent, time.monotonic(), attempts)
        )

    def keep_going(self, started: float) -> bool:
        """Load for --duration, and on until every story actor of the killed node answered again.

        Node loss is detected by Ray's health checks (~15 s by default, longer on a loaded
        machine): the load outlasts it, within a hard cap of --duration + 120 s."""
        now = time.monotonic()
        if now < started + self.args.duration:
            return True
        if now > started + self.args.duration + 120:
            return False
        if not self.ray_kill_at:
            return True
        answered = {a.story_id for a in self.acks if a.sent > self.ray_kill_at}
        return now < self.ray_kill_at + 10 or not set(self.report.actors_on_killed_node) <= answered

    async def drive(self, client: Any, stories: list[str], started: float) -> None:
        step = 0
        while self.keep_going(started):
            for story_id in stories:
                kind = step % 3
                if kind == 0:
                    await self.command(client, story_id, "create_subtask", f"t{step}", f"Task {step}", ROLES[step % 3])
                elif kind == 1:
                    await self.command(client, story_id, "update_subtask", f"t{step - 1}", "IN_PROGRESS")
                else:
                    await self.command(client, story_id, "add_decision", f"Decision {step}", "measured, not guessed")
            step += 1

    async def nats_fault(self, started: float) -> None:
        """At 25 % of the load: SIGKILL the event stream's leader; 5 s after a new leader is
        elected, start it again on the same data dir and port and wait until it is current."""
        report = self.report
        stream = self.settings.stream_name
        await asyncio.sleep(max(0.0, started + self.args.duration * 0.25 - time.monotonic()))
        leader = await asyncio.to_thread(self.nats.stream_leader, stream)
        report.nats_killed = leader.server_name
        log(f"FAULT: SIGKILL nats-server {leader.server_name} (pid {leader.pid}), leader of {stream}")
        self.nats_kill_at = killed_at = time.monotonic()
        await asyncio.to_thread(leader.kill)
        while time.monotonic() - killed_at < 60:
            with contextlib.suppress(Exception):
                new = (await asyncio.to_thread(self.nats.stream_cluster, stream))["leader"]
                if new and new != leader.server_name:
                    report.nats_new_leader = new
                    report.nats_election_s = round(time.monotonic() - killed_at, 2)
                    break
            await asyncio.sleep(0.1)
        log(f"new leader {report.nats_new_leader} after {report.nats_election_s} s")
        await asyncio.sleep(5)
        restarted_at = time.monotonic()
        log(f"restarting {leader.server_name} on the same data dir and port")
        # /healthz waits until its streams and consumers are current again
        await asyncio.to_thread(lambda: leader.start().wait_ready(120))
        report.nats_restarted_current_s = round(time.monotonic() - restarted_at, 2)
        log(f"{leader.server_name} healthy (current) after {report.nats_restarted_current_s} s")

    async def ray_fault(self, started: float) -> None:
        """At 55 % of the load: SIGKILL every process of the second Ray node (a machine lost)."""
        report = self.report
        await asyncio.sleep(max(0.0, started + self.args.duration * 0.55 - time.monotonic()))
        placement = await asyncio.to_thread(self.actor_nodes)
        report.actors_on_killed_node = sorted(
            name.removeprefix("story:") for name, node in placement.items()
            if node == self.worker.node_id and name.startswith("story:")
        )  # fmt: skip
        report.projectors_before = {n: self.node_label(v) for n, v in placement.items() if "projector" in n}
        report.ray_node_killed = str(self.worker.node_id)
        log(
            f"FAULT: SIGKILL the second Ray node (session of pid {self.worker.pid}) holding "
            f"{len(report.actors_on_killed_node)} story actors"
        )
        self.ray_kill_at = time.monotonic()
        await asyncio.to_thread(self.worker.kill)

    def actor_nodes(self) -> dict[str, str]:
        """Live named actors of our namespace -> node id."""
        from ray.util.state import list_actors

        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False)
        return {a.name: str(a.node_id) for a in actors if a.name and a.ray_namespace == self.settings.ray_namespace}

    def node_label(self, node_id: str) -> str:
        return "second node" if node_id == self.worker.node_id else "head"

    async def load(self) -> None:
        from fleet_actors.client import FleetClient

        args = self.args
        # the story actors this client creates connect to NATS as the story role
        client = FleetClient.connect(settings=self.role("story"))
        stories = [f"rh-{i:03d}" for i in range(args.stories)]
        with phase(self.report, f"create {len(stories)} stories"):
            await asyncio.gather(*(self.command(client, s, "create_story", f"Story {s}") for s in stories))
        groups = [stories[i :: args.submitters] for i in range(args.submitters)]
        started = time.monotonic()
        with phase(self.report, f"load ({args.duration:.0f} s and until the lost actors answer), faults mid-load"):
            faults = [asyncio.create_task(self.nats_fault(started)), asyncio.create_task(self.ray_fault(started))]
            await asyncio.gather(*(self.drive(client, group, started) for group in groups))
            await asyncio.gather(*faults)
        elapsed = time.monotonic() - started
        report = self.report
        under_load = [a for a in self.acks if a.sent >= started]
        report.load_seconds = round(elapsed, 1)
        report.commands_per_s = round(len(under_load) / elapsed, 1)
        report.max_command_s = round(max((a.acked - a.sent for a in under_load), default=0.0), 2)
        report.stall_nats_kill_s = _stall(under_load, self.nats_kill_at)
        report.stall_ray_kill_s = _stall(under_load, self.ray_kill_at)
        with phase(self.report, "wait for the projections to catch up"):
            await self.wait_projected(client, stories)
        await self.check_log(stories)
        self.check_actors()

    async def wait_projected(self, client: Any, stories: list[str]) -> None:
        from fleet_actors.errors import ProjectionTimeout

        last: dict[str, int] = {}
        for ack in self.acks:
            last[ack.story_id] = max(last.get(ack.story_id, 0), ack.version)
        started = time.monotonic()
        pending = dict(last)
        while pending and time.monotonic() - started < 180:
            for story_id, version in list(pending.items()):
                with contextlib.suppress(ProjectionTimeout):
                    await client.aio.wait_for_projection(story_id, version, 10.0)
                    del pending[story_id]
        self.report.projection_catch_up_s = round(time.monotonic() - started, 2)
        self.report.checks["projections caught up"] = not pending
        if pending:
            self.report.problems.append(f"projections behind for {sorted(pending)}")

    async def check_log(self, stories: list[str]) -> None:
        """Read every story straight from JetStream and hold each acknowledgement against it."""
        from fleet_actors.adapters.jetstream import JetStreamEventStore

        report = self.report
        store = await JetStreamEventStore.connect(self.settings)
        try:
            logs = {s: [e.envelope for e in await store.read_all(s)] for s in stories}
        finally:
            await store.close()
        problems = report.problems
        report.events_in_log = sum(len(events) for events in logs.values())
        for story_id, events in logs.items():
            versions = [e.version for e in events]
            if versions != list(range(1, len(events) + 1)):
                problems.append(f"{story_id}: versions are not 1..{len(events)}: {versions[:10]}...")
            ids = [e.event_id for e in events]
            if len(set(ids)) != len(ids):
                problems.append(f"{story_id}: an event id is stored twice")
        lost = 0
        for ack in self.acks:
            by_version = {e.version: e for e in logs.get(ack.story_id, [])}
            stored = by_version.get(ack.version)
            ids = {e.event_id for e in logs.get(ack.story_id, []) if e.command_id == ack.command_id}
            if stored is None or not set(ack.event_ids) <= ids or (ack.event_ids and stored.event_id not in ids):
                lost += 1
                problems.append(f"{ack.story_id} v{ack.version} ({ack.command_id}) acknowledged but not in the log")
        report.commands_acked = len(self.acks)
        report.events_acked = sum(len(a.event_ids) for a in self.acks)
        report.commands_retried = sum(1 for a in self.acks if a.attempts > 1)
        report.commands_failed = len(self.failures)
        problems.extend(self.failures[:20])
        report.checks["no acknowledged event lost"] = lost == 0 and report.events_in_log >= report.events_acked
        report.checks["logs gap-free, no duplicates"] = not any("versions" in p or "twice" in p for p in problems)
        report.checks["every command eventually acknowledged"] = not self.failures

    def check_actors(self) -> None:
        report = self.report
        placement = self.actor_nodes()
        report.projectors_after = {n: self.node_label(v) for n, v in placement.items() if "projector" in n}
        after_kill = {a.story_id for a in self.acks if a.sent > self.ray_kill_at}
        moved = [
            s for s in report.actors_on_killed_node
            if s in after_kill and placement.get(f"story:{s}") not in (None, self.worker.node_id)
        ]  # fmt: skip
        report.reactivated_elsewhere = moved
        # the last of the lost stories to be served again, by a command sent after the kill
        first_by_story: dict[str, float] = {}
        for ack in self.acks:
            if ack.story_id in report.actors_on_killed_node and ack.sent > self.ray_kill_at:
                waited = ack.acked - self.ray_kill_at
                first_by_story[ack.story_id] = min(waited, first_by_story.get(ack.story_id, waited))
        report.all_lost_stories_served_s = round(max(first_by_story.values(), default=0.0), 2)
        report.checks["story actors re-activated on another node"] = bool(report.actors_on_killed_node) and set(
            moved
        ) == set(report.actors_on_killed_node)
        if not report.actors_on_killed_node:
            report.problems.append("no story actor lived on the second node: nothing was re-activated")
        running = len(report.projectors_after)
        report.checks["projectors running after the node loss"] = running == self.settings.projectors

    def verify(self) -> None:
        report = self.report
        with phase(report, "fleet-actors projections status / verify (operator)"):
            status = subprocess.run(
                [*CLI, "projections", "status"], env=self.env("operator"), capture_output=True, text=True, timeout=120
            )
            log("projections status:\n" + status.stdout.rstrip())
            done = subprocess.run(
                [*CLI, "verify"], env=self.env("operator"), capture_output=True, text=True, timeout=300
            )
        report.verify_exit = done.returncode
        report.verify_output = (done.stdout.strip().splitlines() or [done.stderr.strip()[-300:]])[-1]
        report.checks["verify clean"] = done.returncode == 0
        report.checks["restarted nats-server current again"] = self.restarted_node_current()
        report.gateway_health = self.gateway_health()
        report.checks["gateway (Ray Client) serving after both faults"] = set(report.gateway_health.values()) == {
            "SERVING"
        }
        with phase(report, "least privilege: the roles' connections, a projector tries to delete the stream"):
            self.check_roles()

    def check_roles(self) -> None:
        """Who is connected as whom, then the projector's identity against the event stream itself."""
        report = self.report
        for node in self.nats.running_nodes():
            with urllib.request.urlopen(f"{node.monitor_url}/connz?auth=true&limit=10000", timeout=5) as response:
                for connection in json.load(response).get("connections") or []:
                    user = str(connection.get("authorized_user") or "(none)")
                    report.nats_connections.setdefault(user, []).append(str(connection.get("name") or "?"))
        projectors = {u for u, names in report.nats_connections.items() for n in names if n.startswith("fleet-proj")}
        report.checks["components connected as their NATS roles (none as admin)"] = (
            projectors == {"projector"}
            and "admin" not in report.nats_connections
            and "(none)" not in report.nats_connections
        )
        stream = self.settings.stream_name
        before = self.stream_state(stream)
        report.projector_stream_admin = asyncio.run(attempt_stream_administration(self.role("projector"), stream))
        after = self.stream_state(stream)
        refused = set(report.projector_stream_admin.values()) == {REFUSED}
        report.checks["a projector's NATS identity is refused deleting, purging or editing the stream"] = (
            refused and before == after
        )
        if before != after:
            report.problems.append(f"the event stream changed under the projector's attempts: {before} -> {after}")

    def stream_state(self, stream: str) -> tuple[object, ...]:
        """The stream's message count, last sequence and description, as the admin reads them."""

        async def read() -> tuple[object, ...]:
            from fleet_actors.adapters.jetstream.connection import connect_nats

            nc = await connect_nats(self.settings, name="fleet-rehearsal-check")
            try:
                info = await nc.jsm().stream_info(stream)
                return info.state.messages, info.state.last_seq, info.config.description
            finally:
                await nc.close()

        try:
            return asyncio.run(read())
        except Exception as error:  # a deleted stream, for one
            return (f"{type(error).__name__}: {error}",)

    def gateway_health(self) -> dict[str, str]:
        """grpc.health.v1 as the Kubernetes probes ask it: the server, and the ContextService."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.gateway is not None
        out = {}
        with grpc.insecure_channel(self.gateway.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "fleet.context.v1.ContextService"):
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                    out[service or "(server)"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                except grpc.RpcError as error:
                    out[service or "(server)"] = f"error: {error.code().name}"
        return out

    def restarted_node_current(self, timeout: float = 30.0) -> bool:
        """The killed and restarted nats-server is the leader or a current follower (per the leader)."""
        deadline = time.monotonic() + timeout
        cluster: dict[str, Any] = {}
        while time.monotonic() < deadline:
            cluster = self.nats.stream_cluster(self.settings.stream_name)
            replicas = {r["name"]: bool(r.get("current")) for r in cluster.get("replicas", [])}
            if cluster.get("leader") == self.report.nats_killed or replicas.get(self.report.nats_killed):
                return True
            time.sleep(0.5)
        self.report.problems.append(f"stream cluster at the end: {json.dumps(cluster)[:500]}")
        return False


def _stall(acks: list[Ack], at: float) -> float:
    """The longest wait of a command that was in flight at `at` or sent within 1 s after it."""
    hit = [a.acked - a.sent for a in acks if at and a.sent <= at + 1.0 and a.acked >= at]
    return round(max(hit, default=0.0), 2)


def summary(report: Report, seconds: float) -> str:
    lines = [
        "",
        "=== multi-node rehearsal ===",
        f"stories {report.stories}; commands acknowledged {report.commands_acked} "
        f"({report.commands_per_s}/s over {report.load_seconds} s of load), retried {report.commands_retried}, "
        f"failed {report.commands_failed}; slowest {report.max_command_s} s; longest wait of a command in flight "
        f"at the nats kill {report.stall_nats_kill_s} s, at the Ray node kill {report.stall_ray_kill_s} s",
        f"events: acknowledged {report.events_acked}, in the log {report.events_in_log}",
        f"nats: killed stream leader {report.nats_killed}; new leader {report.nats_new_leader} after "
        f"{report.nats_election_s} s; restarted node current after {report.nats_restarted_current_s} s",
        f"ray: killed node {report.ray_node_killed[:12]} with {len(report.actors_on_killed_node)} story actors; "
        f"re-activated elsewhere {len(report.reactivated_elsewhere)}; all of them served again "
        f"{report.all_lost_stories_served_s} s after the kill",
        f"projectors before {report.projectors_before}; after {report.projectors_after}",
        f"gateway over Ray Client after both faults: {report.gateway_health}",
        f"nats users of live connections: { {u: len(n) for u, n in sorted(report.nats_connections.items())} }; "
        f"the projector's identity against the event stream: {report.projector_stream_admin}",
        f"projections caught up in {report.projection_catch_up_s} s after the load; verify exit {report.verify_exit}: "
        f"{report.verify_output}",
        "phases (s): " + ", ".join(f"{k} {v}" for k, v in report.phases_s.items()),
        "",
    ]
    lines += [f"  [{'PASS' if ok else 'FAIL'}] {name}" for name, ok in report.checks.items()]
    lines += [f"  problem: {p}" for p in report.problems[:20]]
    lines.append(f"{'PASSED' if report.ok else 'FAILED'} in {seconds:.0f} s")
    return "\n".join(lines)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of command load (default 30)")
    parser.add_argument("--stories", type=int, default=16, help="stories under load (default 16)")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent command loops (default 4)")
    parser.add_argument("--max-seconds", type=int, default=900, help="watchdog for the whole run (default 900)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fleet-rehearsal-"))
    started = time.monotonic()
    load1 = os.getloadavg()[0]
    log(f"data and logs in {root}; load average {load1:.1f} on {os.cpu_count()} cores")
    rehearsal = Rehearsal(args, root)
    previous: dict[int, Callable[..., Any] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        previous[signum] = signal.signal(signum, _interrupt)
    signal.alarm(args.max_seconds)
    try:
        rehearsal.start()
        # ray.init replaces the SIGTERM handler with one that exits on the spot: take it back
        from fleet_actors.client import connect_ray

        connect_ray(rehearsal.settings)
        signal.signal(signal.SIGTERM, _interrupt)
        asyncio.run(rehearsal.load())
        rehearsal.verify()
    except Interrupted as why:
        rehearsal.report.problems.append(f"interrupted by {why}")
        rehearsal.report.checks["completed"] = False
    except Exception as error:
        rehearsal.report.problems.append(f"{type(error).__name__}: {error}"[:2000])
        rehearsal.report.checks["completed"] = False
    finally:
        signal.alarm(0)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)  # stopping is bounded by SIGKILL timeouts
        log("stopping every process started, by pid")
        rehearsal.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    report = rehearsal.report
    print(summary(report, time.monotonic() - started), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2) + "\n")
    if args.keep or not report.ok:
        log(f"kept {root} for inspection" if args.keep or report.ok else f"logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
