"""A JetStream cluster of several `nats-server` processes on loopback, for multi-node rehearsals.

Each node is a :class:`~fleet_actors.devstack.servers.NatsServer` (same binary check, same
``sync_interval`` default of ``always``) whose config file gains a ``cluster`` block: a route
port of its own and routes to every peer. Streams created with ``num_replicas=3`` are then
replicated by RAFT across the nodes; killing the stream leader makes the other two elect a new
one while clients reconnect to the surviving servers.

With ``users`` (and ``permissions``) every node gets the local stack's ``authorization`` block: the
same NATS identities per role as ``dev up`` (fleet_actors.devstack.credentials).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from fleet_actors.devstack.process import LOOPBACK
from fleet_actors.devstack.ray_worker import distinct_free_ports
from fleet_actors.devstack.servers import NatsServer, _http_status
from fleet_actors.errors import BackendUnavailable
from fleet_actors.urls import redact_url


class NatsClusterNode(NatsServer):
    """One member of a :class:`NatsCluster`; ready when ``/healthz`` says JetStream is current."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        server_name: str,
        cluster_name: str,
        route_port: int,
        port: int | None = None,
        monitor_port: int | None = None,
        sync_interval: str = "always",
        server_tags: tuple[str, ...] = (),
        users: Mapping[str, str] | None = None,
        client_user: str | None = None,
        permissions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            port,
            monitor_port=monitor_port,
            sync_interval=sync_interval,
            server_name=server_name,
            users=users,
            client_user=client_user,
            permissions=permissions,
        )
        self.cluster_name = cluster_name
        self.route_port = route_port
        self.server_tags = server_tags
        self.peers: list[int] = []  # the route ports of the other members

    def _prepare(self) -> None:
        super()._prepare()
        routes = ", ".join(json.dumps(f"nats-route://{LOOPBACK}:{port}") for port in self.peers)
        with open(self.config_path, "a") as config:
            if self.server_tags:
                config.write(f"server_tags: {json.dumps(list(self.server_tags))}\n")
            config.write(
                "cluster {\n"
                f"  name: {json.dumps(self.cluster_name)}\n"
                f"  listen: {json.dumps(f'{LOOPBACK}:{self.route_port}')}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )

    def _probe(self) -> str | None:
        # Without js-enabled-only, /healthz also waits for a JetStream meta leader and for this
        # server's streams and consumers to be current: a restarted node is "ready" once caught up.
        status = _http_status(f"{self.monitor_url}/healthz")
        return None if status == 200 else f"/healthz: {status}"


class NatsCluster:
    """`size` JetStream servers on 127.0.0.1 with full-mesh routes; started and stopped by pid.

    ``users`` (user -> password), ``client_user`` and ``permissions`` (user -> NATS permissions) are
    every node's, as for :class:`~fleet_actors.devstack.servers.NatsServer`; without users anyone may
    connect with every right."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        size: int = 3,
        *,
        cluster_name: str = "fleet-rehearsal",
        sync_interval: str = "always",
        server_tags: tuple[str, ...] = (),
        users: Mapping[str, str] | None = None,
        client_user: str | None = None,
        permissions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.data_dir = Path(data_dir).resolve()
        # route, client and monitor ports of every node, all different
        ports = distinct_free_ports(3 * size)
        self.nodes = [
            NatsClusterNode(
                self.data_dir / f"n{i + 1}",
                server_name=f"{cluster_name}-n{i + 1}",
                cluster_name=cluster_name,
                route_port=ports[3 * i],
                port=ports[3 * i + 1],
                monitor_port=ports[3 * i + 2],
                sync_interval=sync_interval,
                server_tags=server_tags,
                users=users,
                client_user=client_user,
                permissions=permissions,
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.peers = [n.route_port for n in self.nodes if n is not node]

    def __iter__(self) -> Iterator[NatsClusterNode]:
        return iter(self.nodes)

    @property
    def url(self) -> str:
        """Every client URL, comma-separated (FLEET_NATS_URL accepts such a list), with the client
        user's credentials when the servers have users."""
        return ",".join(node.url for node in self.nodes)

    @property
    def address(self) -> str:
        """Every client URL without credentials, comma-separated."""
        return ",".join(node.address for node in self.nodes)

    @property
    def users(self) -> dict[str, str]:
        return self.nodes[0].users

    def start(self, timeout: float = 60.0) -> Self:
        try:
            for node in self.nodes:
                node.start()
            # readiness needs a quorum: wait for all in parallel, not one after another
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                for future in [pool.submit(node.wait_ready, timeout) for node in self.nodes]:
                    future.result()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for future in [pool.submit(node.stop) for node in self.nodes]:
                future.result()

    def node(self, server_name: str) -> NatsClusterNode:
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def running_nodes(self) -> list[NatsClusterNode]:
        return [node for node in self.nodes if node.running]

    def stream_cluster(self, stream: str) -> dict[str, Any]:
        """The stream's RAFT group as its leader reports it: ``leader`` and ``replicas`` (with
        ``current`` and ``lag`` per follower; only the leader tracks those).

        Read from the monitoring endpoint (``/jsz``), so it needs no client connection.
        """
        errors: list[str] = []
        views = {}
        for node in self.running_nodes():
            try:
                view = _stream_view(node, stream)
            except (urllib.error.URLError, OSError, ValueError) as err:
                errors.append(f"{node.server_name}: {err}")
                continue
            if view and view.get("leader"):
                views[node.server_name] = view
        for name, view in views.items():
            if view["leader"] == name:
                return view
        if views:  # the leader is not among the running nodes we could ask: a follower's view
            return next(iter(views.values()))
        raise BackendUnavailable(f"no running node knows a leader for stream {stream} ({'; '.join(errors)})")

    def stream_leader(self, stream: str) -> NatsClusterNode:
        return self.node(str(self.stream_cluster(stream)["leader"]))

    def __repr__(self) -> str:
        return f"NatsCluster({[n.server_name for n in self.nodes]!r}, url={redact_url(self.url)!r})"


def _stream_view(node: NatsClusterNode, stream: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(f"{node.monitor_url}/jsz?streams=true", timeout=3.0) as response:
        jsz = json.load(response)
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                return dict(detail.get("cluster") or {})
    return None
