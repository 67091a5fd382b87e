"""A second Ray node on the same machine (`ray start --address ... --block`), for multi-node rehearsals.

It joins a :class:`~fleet_actors.devstack.ray_head.RayHead` with the head's token, its own temp
dir and its own ports, so that killing it (its whole process session, like a machine that
loses power) takes down only the actors that lived on it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Self

from fleet_actors.devstack.process import (
    LOOPBACK,
    find_executable,
    port_is_free,
)
from fleet_actors.devstack.ray_head import RayHead, RaySessionServer, ray_node_environment

#: worker processes of this node take ports from a range of this size
WORKER_PORTS = 200


class RayWorkerNode(RaySessionServer):
    """A non-head Ray node joined to `head`; ready once the head lists it ALIVE."""

    name = "ray-worker"
    stop_grace = 15.0

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        head: RayHead,
        *,
        num_cpus: int = 1,
        object_store_bytes: int = 256 * 1024**2,
        resources: dict[str, float] | None = None,
    ) -> None:
        super().__init__(data_dir, 0)  # ports are chosen at start, once the head holds its own
        self.head = head
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        #: a custom resource only this node offers: tells it apart in the node table, and pins
        #: tasks to it (``resources={node.marker: 0.001}``)
        self.marker = f"fleet_node_{secrets.token_hex(4)}"
        self.resources = {**(resources or {}), self.marker: 1.0}
        self.object_manager_port = self.dashboard_agent_port = self.dashboard_agent_grpc_port = 0
        self.runtime_env_agent_port = self.metrics_port = self.min_worker_port = 0
        self._tmp_dir: Path | None = None
        self._sid: int | None = None
        self.node_id: str | None = None

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        super()._prepare()
        # Every port `ray start` would otherwise take from a fixed default: two nodes on one
        # machine must not share any. Chosen now, while the head's ports are bound (a head
        # constructed but not yet started could still be handed the same ones).
        (
            self.port,  # the node manager's
            self.object_manager_port,
            self.dashboard_agent_port,
            self.dashboard_agent_grpc_port,
            self.runtime_env_agent_port,
            self.metrics_port,
        ) = distinct_free_ports(6)
        self.min_worker_port = _free_range(WORKER_PORTS)
        # Ray's unix socket paths must stay short: a temp dir of its own, under /tmp
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="frw-", dir="/tmp"))

    def _environment(self) -> dict[str, str]:
        # as on the head: Ray's metrics endpoint (every interface, no token) only when the head has it
        assert self._tmp_dir is not None, "prepared first"
        return ray_node_environment(self._tmp_dir, self.head.token_path, metrics=self.head.metrics)

    def _command(self) -> list[str]:
        command = [
            str(find_executable("ray")),
            "start", "--block",
            "--address", self.head.address,
            "--node-ip-address", LOOPBACK,
            "--num-cpus", str(self.num_cpus),
            "--object-store-memory", str(self.object_store_bytes),
            "--node-manager-port", str(self.port),
            "--object-manager-port", str(self.object_manager_port),
            "--dashboard-agent-listen-port", str(self.dashboard_agent_port),
            "--dashboard-agent-grpc-port", str(self.dashboard_agent_grpc_port),
            "--runtime-env-agent-port", str(self.runtime_env_agent_port),
            "--metrics-export-port", str(self.metrics_port),
            "--min-worker-port", str(self.min_worker_port),
            "--max-worker-port", str(self.min_worker_port + WORKER_PORTS - 1),
            "--temp-dir", str(self._tmp_dir),
            "--disable-usage-stats",
        ]  # fmt: skip
        return [*command, "--resources", json.dumps(self.resources)]

    def start(self) -> Self:
        super().start()
        assert self._proc is not None
        self._sid = self._proc.pid
        return self

    def _probe(self) -> str | None:
        got = self.head._get("/api/v0/nodes")
        if isinstance(got, str) or got[0] != 200:
            return f"head dashboard: {got if isinstance(got, str) else got[0]}"
        for node in json.loads(got[1])["data"]["result"]["result"]:
            if node.get("state") == "ALIVE" and self.marker in node.get("resources_total", {}):
                self.node_id = node.get("node_id")
                return None
        return "not ALIVE in the head's node table yet"


def _free_range(size: int, low: int = 20000, high: int = 32000) -> int:
    """The first port of `size` consecutive free loopback ports (checked now, not reserved).

    Below the kernel's ephemeral range (32768 and up), where :func:`free_port` picks the
    node's other ports, so that the two never overlap."""
    start = low + (os.getpid() * 37) % (high - low - size)
    for base in range(start, high - size, size):
        if all(port_is_free(p) for p in range(base, base + size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports between {low} and {high}")


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free loopback ports: each stays bound until all are chosen, so the
    kernel cannot hand out the same one twice (successive :func:`free_port` calls can)."""
    holders: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holders.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in holders]
    finally:
        for sock in holders:
            sock.close()
