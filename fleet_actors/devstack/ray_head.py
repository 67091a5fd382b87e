"""A Ray head node (`ray start --head --block`) that other processes join with RAY_ADDRESS.

Token authentication: Ray 2.60 turns it on for `ray start` only when RAY_AUTH_MODE is unset
and ~/.ray/auth_token happens to exist (any earlier local ``ray.init()`` writes that file),
while drivers given an explicit address never turn it on by themselves. Whether a client
could connect therefore depended on the history of the home directory. The head always runs
with ``RAY_AUTH_MODE=token`` and a private token file in its data dir, and :meth:`RayHead.env`
hands both to clients: the GCS listens on every interface (Ray maps 127.0.0.1 to the
machine's address), so the token is what keeps other hosts and users out.

Ray reads RAY_AUTH_MODE once, when ``ray`` is imported: set it before the import.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from fleet_actors.actors.spare_workers import PRELOAD_MODULES
from fleet_actors.devstack.process import LOOPBACK, ManagedServer, find_executable, free_port, terminate_session

RAY_AUTH_MODE = "token"

#: Ray's housekeeping intervals on a local node, longer than Ray's defaults (which suit clusters of
#: many nodes under load): a dev stack that does nothing should cost next to nothing (issue 25,
#: docs/benchmarks.md "Idle stack"). Each is a ``RAY_<name>`` setting Ray reads at process start;
#: one set in the environment of `dev up` wins. What stays, and why: the workers' own signal check
#: every 10 ms (hard-coded in Ray's core worker, ~5 ms of CPU per second per live actor), the
#: health checks between GCS and raylet (a dead raylet must be noticed), and the log monitor
#: (worker output reaches drivers), which only looks for new log files less often.
IDLE_TUNING = {
    # raylet: resource reports to the GCS, memory-pressure GC checks, disk and memory monitors,
    # object manager timer, idle-worker reaping (100-250 ms by default); one node has no peers
    "RAY_raylet_report_resources_period_milliseconds": "1000",
    "RAY_raylet_check_gc_period_milliseconds": "1000",
    "RAY_memory_monitor_refresh_ms": "1000",
    "RAY_local_fs_monitor_interval_ms": "1000",
    "RAY_object_manager_timer_freq_ms": "1000",
    "RAY_kill_idle_workers_interval_ms": "1000",
    # every process: event-loop statistics and the event-loop health probe (1 s by default)
    "RAY_event_stats": "0",
    "RAY_io_context_monitor_probe_interval_ms": "10000",
    # the dashboard agent's reporter reads every worker's CPU and memory (psutil) every 5 s: every 30 s
    # (the dashboard's node and worker figures refresh that often)
    "REPORTER_UPDATE_INTERVAL_MS": "30000",
    # the log monitor globs the log folder for new files every 0.1 s below 1,000 files: every 5 s
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
}


class RaySessionServer(ManagedServer):
    """A `ray start` node run in a session of its own, with a private temp dir."""

    _sid: int | None
    _tmp_dir: Path | None

    def _kill_all(self) -> None:
        assert self._sid is not None
        terminate_session(self._sid, timeout=10.0)

    def _cleanup(self) -> None:
        super()._cleanup()
        # `ray start` stops its children on SIGTERM, but workers it lost track of, or all of
        # them after a SIGKILL of the node, would survive: sweep the whole session.
        if self._sid is not None:
            terminate_session(self._sid, timeout=10.0)
            self._sid = None
        if self._tmp_dir is not None:
            self._keep_logs()
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    @property
    def logs_path(self) -> Path:
        """DATA_DIR/logs: the node's Ray logs (every actor's worker-*.out/err, raylet, GCS). While the
        node runs it links to the session's logs in Ray's temp dir; on stop they are copied here."""
        return self.data_dir / "logs"

    def _link_logs(self) -> None:
        assert self._tmp_dir is not None
        with contextlib.suppress(OSError):
            if self.logs_path.is_symlink():
                self.logs_path.unlink()
            elif self.logs_path.exists():
                shutil.rmtree(self.logs_path, ignore_errors=True)  # the copy of an earlier run
            self.logs_path.symlink_to(self._tmp_dir / "ray" / "session_latest" / "logs", target_is_directory=True)

    def _keep_logs(self) -> None:
        assert self._tmp_dir is not None
        with contextlib.suppress(OSError):
            live = (self._tmp_dir / "ray" / "session_latest" / "logs").resolve()
            if self.logs_path.is_symlink():
                self.logs_path.unlink()
            if live.is_dir():
                shutil.copytree(live, self.logs_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))


def ray_node_environment(tmp_dir: Path, token_path: Path, *, metrics: bool) -> dict[str, str]:
    """The environment of a `ray start` of this project's, head or worker node: the idle tuning
    (any RAY_* already set wins), token auth, and every worker preloading the story actor's code."""
    env = {**IDLE_TUNING, **os.environ}
    # RAY_AUTH_TOKEN would win over our token file; an inherited RAY_ADDRESS (another
    # cluster's) would be used by any process of this node calling ray.init() bare.
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(name, None)
    env.update(
        RAY_TMPDIR=str(tmp_dir),
        RAY_AUTH_MODE=RAY_AUTH_MODE,
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM the node otherwise drains for up to 30 s while detached actors
        # (every story actor) are alive; a dev stack has nothing to hand over.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # the raylet then starts the agent with --disable-metrics-collection: no open /metrics
        RAY_enable_metrics_collection="1" if metrics else "0",
        # `ray job submit -- python -m fleet_actors...` runs `python` from this PATH: it must
        # be the interpreter that has fleet-actors installed, not whatever the shell found first.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        # every worker imports the story actor's code as it starts, before it idles in the pool
        # (spare workers): not when a story activates on it. An environment variable is read by
        # each node's own processes, so worker nodes need it as much as the head.
        RAY_preload_python_modules=",".join(PRELOAD_MODULES),
    )
    return env


class RayHead(RaySessionServer):
    """A single-node Ray cluster with its dashboard (needed by `ray job submit`) on loopback."""

    name = "ray-head"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        num_cpus: int = 2,
        dashboard_port: int | None = None,
        client_server_port: int | None = None,
        dashboard_agent_port: int | None = None,
        metrics_export_port: int | None = None,
        metrics: bool = False,
        dashboard_metrics_port: int | None = None,
        autoscaler_metrics_port: int | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.num_cpus = num_cpus
        #: Ray's Prometheus endpoint (per node, in the dashboard agent). It cannot be bound to loopback
        #: (``ray start`` replaces 127.0.0.1 by the machine's address, and the agent then listens on
        #: every interface) and it answers without the token: off unless asked for (docs/security.md)
        self.metrics = metrics
        #: the dashboard's own Prometheus endpoint (its request counts and latencies). Ray cannot turn it
        #: off while the dashboard runs, binds it to every interface and serves it without the token;
        #: Ray's default port (44227) is fixed, so two stacks on one machine would share it
        self.dashboard_metrics_port = dashboard_metrics_port or free_port()
        #: the same for the autoscaler monitor's metrics (Ray's fixed default 44217)
        self.autoscaler_metrics_port = autoscaler_metrics_port or free_port()
        self.dashboard_port = dashboard_port or free_port()
        # Both default to fixed ports (10001, 52365): a second cluster on the machine would clash.
        self.client_server_port = client_server_port or free_port()
        self.dashboard_agent_port = dashboard_agent_port or free_port()
        #: where the node serves Prometheus metrics: Ray's own and the actors' ray.util.metrics
        self.metrics_export_port = metrics_export_port or free_port()
        self._tmp_dir: Path | None = None
        self._sid: int | None = None

    @property
    def address(self) -> str:
        """The value for RAY_ADDRESS / ``ray.init(address=...)``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return self.address

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "auth_token"

    def env(self) -> dict[str, str]:
        """What a driver, `ray job submit` or JobSubmissionClient needs to reach this head."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": RAY_AUTH_MODE,
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "FLEET_RAY_DASHBOARD_URL": self.dashboard_url,
            # actors' metrics only with `dev up --ray-metrics`: Ray serves them on every interface,
            # without its token (docs/security.md)
            **({"FLEET_RAY_METRICS_URL": self.metrics_url} if self.metrics else {}),
        }

    @property
    def metrics_url(self) -> str:
        """The node's Prometheus endpoint (story actors, projectors, replay actors: ``ray_fleet_*``)."""
        return f"http://{LOOPBACK}:{self.metrics_export_port}/metrics"

    def _prepare(self) -> None:
        super()._prepare()
        if not self.token_path.exists():
            # kept across restarts so that clients holding the env file keep working
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        # Unix socket paths are limited to ~107 bytes and Ray nests several levels under its
        # temp dir, so it cannot live in the (arbitrarily deep) data dir.
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))

    def _environment(self) -> dict[str, str]:
        assert self._tmp_dir is not None, "prepared first"
        env = ray_node_environment(self._tmp_dir, self.token_path, metrics=self.metrics)
        env.update(
            DASHBOARD_METRIC_PORT=str(self.dashboard_metrics_port),
            AUTOSCALER_METRIC_PORT=str(self.autoscaler_metrics_port),
        )
        return env

    def _command(self) -> list[str]:
        return [
            str(find_executable("ray")),
            "start", "--head", "--block",
            "--port", str(self.port),
            "--node-ip-address", LOOPBACK,
            "--num-cpus", str(self.num_cpus),
            "--disable-usage-stats",
            "--include-dashboard=true",
            "--dashboard-host", LOOPBACK,
            "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(self.dashboard_agent_port),
            "--ray-client-server-port", str(self.client_server_port),
            "--metrics-export-port", str(self.metrics_export_port),
        ]  # fmt: skip

    def start(self) -> Self:
        super().start()
        assert self._proc is not None
        self._sid = self._proc.pid  # start_new_session: the head leads its own session
        self._link_logs()
        return self

    def _get(self, path: str) -> tuple[int, bytes] | str:
        request = urllib.request.Request(
            self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=3.0) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as err:
            return err.code, b""
        except (urllib.error.URLError, OSError) as err:
            return str(getattr(err, "reason", err))

    def _probe(self) -> str | None:
        # The dashboard answers a few seconds before the raylet registers: wait for an ALIVE
        # node (drivers can connect) and for the jobs API (`ray job submit` works).
        nodes = self._get("/api/v0/nodes")
        if isinstance(nodes, str) or nodes[0] != 200:
            return f"dashboard /api/v0/nodes: {nodes if isinstance(nodes, str) else nodes[0]}"
        listed = json.loads(nodes[1])["data"]["result"]["result"]
        if not any(node.get("state") == "ALIVE" for node in listed):
            return "no ALIVE node yet"
        jobs = self._get("/api/jobs/")
        if isinstance(jobs, str) or jobs[0] != 200:
            return f"dashboard /api/jobs/: {jobs if isinstance(jobs, str) else jobs[0]}"
        return None
