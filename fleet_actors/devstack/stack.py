"""The whole local stack in one data directory: NATS, Valkey, ArcadeDB and optionally a Ray head."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from fleet_actors.devstack.credentials import (
    StackCredentials,
    nats_identity_env,
    nats_identity_settings,
    nats_permissions,
    private_dir,
    write_private,
)
from fleet_actors.devstack.process import LOOPBACK, ManagedServer, port_is_free
from fleet_actors.devstack.ray_head import RayHead
from fleet_actors.devstack.servers import DEFAULT_GRAPH_PASSWORD, ArcadeDBServer, NatsServer, ValkeyServer
from fleet_actors.errors import BackendUnavailable, ConfigurationError, StoryError
from fleet_actors.settings import Settings

#: seconds between two looks at the servers of a supervised stack
SUPERVISE_INTERVAL = 0.5
#: pauses before the restarts of one server within RESTART_WINDOW seconds; when they are used up
#: (the server keeps dying, or will not start), the supervisor gives up and the stack stops
RESTART_BACKOFF: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
RESTART_WINDOW = 120.0

_DATA_PORTS = ("nats", "nats_monitor", "valkey", "arcadedb_bolt", "arcadedb_http")
_RAY_PORTS = (
    "ray_gcs",
    "ray_dashboard",
    "ray_client_server",
    "ray_dashboard_agent",
    "ray_metrics",
    "gateway_metrics",
    "ray_dashboard_metrics",
    "ray_autoscaler_metrics",
)


def _choose_ports(names: Iterable[str], saved: dict[str, int]) -> dict[str, int]:
    """Reuse the saved port of each name while it is free, else pick a new free one."""
    chosen: dict[str, int] = {}
    holders: list[socket.socket] = []
    try:
        for name in names:
            port = saved.get(name)
            if isinstance(port, int) and port not in chosen.values() and port_is_free(port):
                chosen[name] = port
                continue
            # keep each new port bound until all are chosen, so no two names get the same one
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holders.append(sock)
            sock.bind((LOOPBACK, 0))
            chosen[name] = int(sock.getsockname()[1])
    finally:
        for sock in holders:
            sock.close()
    return chosen


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ServerSupervisor:
    """Restarts a server that died, with the same data directory and port (so ``fleet.env`` stays
    true), after a bounded backoff, logging one line per restart. A server that cannot be kept
    running (``len(backoff)`` restarts within ``window`` seconds), or a ``fatal`` one that died (the
    Ray head: its actors are gone with it), raises BackendUnavailable: the caller stops the stack."""

    def __init__(
        self,
        restartable: Sequence[ManagedServer],
        fatal: Sequence[ManagedServer] = (),
        *,
        backoff: Sequence[float] = RESTART_BACKOFF,
        window: float = RESTART_WINDOW,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self._restartable = list(restartable)
        self._fatal = list(fatal)
        self._backoff = tuple(backoff)
        self._window = window
        self._log = log
        self._restarts: dict[str, list[float]] = {}

    def check(self) -> None:
        """One look at every server: restart those that died; raises BackendUnavailable to give up."""
        for server in self._fatal:
            code = server.exit_code
            if code is not None:
                raise BackendUnavailable(
                    f"{server.name} (pid {server.pid}) exited with code {code}; it is not restarted"
                )
        for server in self._restartable:
            code = server.exit_code
            if code is not None:
                self._restart(server, code)

    def run(self, stopping: threading.Event | None = None, interval: float = SUPERVISE_INTERVAL) -> None:
        """Check every ``interval`` seconds until ``stopping`` is set (forever without one)."""
        stopping = stopping or threading.Event()
        while not stopping.is_set():
            self.check()
            stopping.wait(interval)

    def _restart(self, server: ManagedServer, code: int) -> None:
        pid = server.pid
        server.stop()  # already gone: reap it
        recent = self._restarts.setdefault(server.name, [])
        failure: StoryError | None = None
        while True:
            now = time.monotonic()
            recent[:] = [t for t in recent if now - t < self._window]
            if len(recent) >= len(self._backoff):
                why = f": {failure.message.splitlines()[0]}" if failure is not None else ""
                raise BackendUnavailable(
                    f"{server.name} (pid {pid}) exited with code {code} and could not be kept running "
                    f"({len(recent)} restarts in {self._window:.0f} s){why}; see {server.log_path}"
                )
            time.sleep(self._backoff[len(recent)])
            recent.append(time.monotonic())
            started = time.monotonic()
            try:
                server.start().wait_ready()
            except StoryError as error:  # did not come up (port taken, crashed at once): back off, retry
                failure = error
                with contextlib.suppress(Exception):
                    server.stop()
                continue
            self._log(
                f"dev up: {server.name} (pid {pid}) exited with code {code}; restarted as pid {server.pid} "
                f"on port {server.port} with the same data in {time.monotonic() - started:.1f} s"
            )
            return


class LocalStack:
    """Starts the servers in parallel, exports their addresses, stops them by pid.

    Data and the chosen ports live in `data_dir` (ports.json), so a stack started again on
    the same directory finds its events, keys and graph again under the same URLs.

    Every server requires credentials, generated once per data dir into ``credentials/`` (0700,
    files 0600; see fleet_actors.devstack.credentials): NATS users per role, a Valkey password and
    the graph's root password. :meth:`env`, :meth:`settings` and ``fleet.env`` carry them: the NATS
    and Valkey URLs hold them in their user info (redacted wherever the project prints a URL).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        ray: bool = True,
        ray_cpus: int = 2,
        nats_sync_interval: str = "always",
        ray_metrics: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        saved: dict[str, int] = {}
        if self.ports_path.exists():
            try:
                saved = json.loads(self.ports_path.read_text())
            except json.JSONDecodeError as err:
                raise ConfigurationError(f"{self.ports_path} is not valid JSON: {err}") from None
        self._ports = {**saved, **_choose_ports(_DATA_PORTS + (_RAY_PORTS if ray else ()), saved)}
        ports = self._ports
        private_dir(self.data_dir)
        # a graph created before credentials existed keeps the root password it was created with
        graph_existed = (self.data_dir / "arcadedb" / "config").exists()
        self.credentials = StackCredentials.load_or_create(
            self.credentials_dir, graph_default=DEFAULT_GRAPH_PASSWORD if graph_existed else ""
        )
        self.nats = NatsServer(
            self.data_dir / "nats",
            ports["nats"],
            monitor_port=ports["nats_monitor"],
            sync_interval=nats_sync_interval,
            users=self.credentials.nats,
            # the stack's settings use the admin, which declares the streams; components may connect
            # as their role (nats_settings / nats_env) with only the rights it needs
            client_user="admin",
            permissions=nats_permissions(),
        )
        self.valkey = ValkeyServer(self.data_dir / "valkey", ports["valkey"], password=self.credentials.valkey)
        self.arcadedb = ArcadeDBServer(
            self.data_dir / "arcadedb",
            ports["arcadedb_bolt"],
            http_port=ports["arcadedb_http"],
            password=self.credentials.graph,
        )
        self.ray: RayHead | None = None
        if ray:
            self.ray = RayHead(
                self.data_dir / "ray",
                ports["ray_gcs"],
                num_cpus=ray_cpus,
                dashboard_port=ports["ray_dashboard"],
                client_server_port=ports["ray_client_server"],
                dashboard_agent_port=ports["ray_dashboard_agent"],
                metrics_export_port=ports["ray_metrics"],
                metrics=ray_metrics,
                dashboard_metrics_port=ports["ray_dashboard_metrics"],
                autoscaler_metrics_port=ports["ray_autoscaler_metrics"],
            )
        self._lock: IO[bytes] | None = None

    @property
    def gateway_metrics_address(self) -> str:
        """Where the stack's gateway serves its metrics (FLEET_METRICS_ADDRESS of that process only)."""
        return f"{LOOPBACK}:{self._ports['gateway_metrics']}"

    def write_prometheus_config(self, targets: Mapping[str, str]) -> Path:
        """DATA_DIR/prometheus.yml: a scrape job per metrics URL (``prometheus --config.file=...``)."""
        lines = ["# fleet-actors local stack: prometheus --config.file=THIS", "global:", "  scrape_interval: 5s"]
        lines.append("scrape_configs:")
        for job, url in targets.items():
            rest = url.split("://", 1)[-1]
            host, _, path = rest.partition("/")
            lines += [f"  - job_name: {job}", f"    metrics_path: /{path}", "    static_configs:"]
            lines.append(f"      - targets: ['{host}']")
        target = self.data_dir / "prometheus.yml"
        target.write_text("\n".join(lines) + "\n")
        return target

    @property
    def credentials_dir(self) -> Path:
        return self.data_dir / "credentials"

    @property
    def ports_path(self) -> Path:
        return self.data_dir / "ports.json"

    @property
    def env_path(self) -> Path:
        """Where :meth:`write_env_file` writes by default; removed again by :meth:`stop`."""
        return self.data_dir / "fleet.env"

    @property
    def servers(self) -> list[ManagedServer]:
        servers: list[ManagedServer] = [self.nats, self.valkey, self.arcadedb]
        return servers if self.ray is None else [*servers, self.ray]

    def start(self, timeout: float = 120.0) -> Self:
        """Start every server and wait until all answer; on any failure stop them all."""
        private_dir(self.data_dir)
        self._acquire_lock()
        # DATA_DIR/fleet.env exists only while a stack runs: one left behind by a killed run
        # must not look like a ready stack to whoever waits for it
        self.env_path.unlink(missing_ok=True)
        pool = ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="devstack-wait")
        try:
            self.ports_path.write_text(json.dumps(self._ports, indent=2, sort_keys=True) + "\n")
            for role in self.credentials.nats:  # `. DATA_DIR/credentials/nats-ROLE.env` after fleet.env
                lines = [f"{key}={value}" for key, value in self.nats_env(role).items()]
                write_private(self.credentials_dir / f"nats-{role}.env", "\n".join(lines) + "\n")
            for server in self.servers:
                server.start()
            waiting = [pool.submit(server.wait_ready, timeout) for server in self.servers]
            for future in wait(waiting, return_when=FIRST_EXCEPTION).done:
                future.result()
        except BaseException:
            # stop first: waiters still polling a live server return as soon as it is gone
            with contextlib.suppress(Exception):
                self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self

    def stop(self) -> None:
        """Stop all servers in parallel (each SIGTERM, then SIGKILL) and wait for them to exit."""
        try:
            with ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="devstack-stop") as pool:
                for future in [pool.submit(server.stop) for server in self.servers]:
                    future.result()
        finally:
            if self._lock is not None:
                self.env_path.unlink(missing_ok=True)
            self._release_lock()

    def supervise(self, stopping: threading.Event | None = None, **options: object) -> None:
        """Keep the stack running until ``stopping`` is set: NATS, Valkey and the graph server are
        restarted when they die (ServerSupervisor); raises BackendUnavailable when one cannot be kept
        running or the Ray head died, and the caller stops the whole stack."""
        fatal = [] if self.ray is None else [self.ray]
        ServerSupervisor([self.nats, self.valkey, self.arcadedb], fatal, **options).run(stopping)  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Connection settings as environment variables (FLEET_*, and RAY_* for Ray's clients)."""
        env = {
            "FLEET_NATS_URL": self.nats.url,
            "FLEET_VALKEY_URL": self.valkey.url,
            "FLEET_NEO4J_URI": self.arcadedb.url,
            "FLEET_NEO4J_USER": self.arcadedb.user,
            "FLEET_NEO4J_PASSWORD": self.arcadedb.password,
            "FLEET_NEO4J_DATABASE": self.arcadedb.database,
            "FLEET_NEO4J_HTTP_URL": self.arcadedb.http_url,
        }
        if self.ray is not None:
            env.update(self.ray.env())
        return env

    def nats_env(self, role: str) -> dict[str, str]:
        """``role``'s NATS identity (fleet_actors.devstack.credentials.NATS_ROLES) as FLEET_* settings."""
        return nats_identity_env(self.nats.address, self.credentials.nats, role)

    def declare_streams(self, env: Mapping[str, str] | None = None) -> None:
        """Declare the streams as the admin, with the stream settings of ``env`` (default: the process's
        environment) over this stack's: components running as a least-privilege role may not."""
        import asyncio

        from fleet_actors.adapters.jetstream.bootstrap import declare_streams

        asyncio.run(declare_streams(Settings.from_env({**(os.environ if env is None else env), **self.env()})))

    def nats_settings(self, role: str, base: Settings | None = None) -> Settings:
        """:meth:`settings` connecting to NATS as ``role`` instead of the admin."""
        return nats_identity_settings(self.settings(base), self.nats.address, self.credentials.nats, role)

    def settings(self, base: Settings | None = None) -> Settings:
        """`base` (default: from the environment) pointed at this stack."""
        base = Settings.from_env() if base is None else base
        changes: dict[str, object] = {
            "nats_url": self.nats.url,
            "valkey_url": self.valkey.url,
            "neo4j_uri": self.arcadedb.url,
            "neo4j_user": self.arcadedb.user,
            "neo4j_password": self.arcadedb.password,
            "neo4j_database": self.arcadedb.database,
            "neo4j_http_url": self.arcadedb.http_url,
        }
        if self.ray is not None:
            changes["ray_address"] = self.ray.address
        return base.replace(**changes)

    def write_env_file(
        self, path: str | os.PathLike[str] | None = None, extra: Mapping[str, str] | None = None
    ) -> Path:
        """Write KEY=VALUE lines (default DATA_DIR/fleet.env), atomically: readers never see half a file."""
        target = Path(path) if path is not None else self.env_path
        lines = ["# fleet-actors local stack; load with fleet_actors.settings.load_env_file or `set -a; . FILE`"]
        lines += [f"{key}={value}" for key, value in {**self.env(), **(extra or {})}.items()]
        return write_private(target, "\n".join(lines) + "\n")  # 0600: it holds the credentials

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        lock = open(self.data_dir / ".lock", "wb")  # noqa: SIM115 - held open while the stack runs
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigurationError(
                f"another local stack is running on {self.data_dir}; stop it first or use another --data-dir"
            ) from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __repr__(self) -> str:
        return f"LocalStack({str(self.data_dir)!r}, servers={self.servers!r})"
