"""Spare Ray worker processes, started ahead of need, so that a story actor activates on one instead of
waiting for a process to start.

Ray runs every actor in a worker process of its own, and a story that activates (first use, or again
after passivation) waits for a new process to start: 1.4-1.8 s of the 2 s cold start measured on a
loaded 2-core machine. The raylet keeps a pool of started, idle workers and places a new actor on one
of them when one fits (same job and runtime environment, never used). It fills that pool by itself
only for the first driver; its ``PrestartWorkers`` call (what Ray's core worker asks for a backlog of
tasks) starts more on request and keeps them for a while, beyond its limit of idle workers.

Every worker of a cluster this project starts also imports the story actor's code while it starts
(PRELOAD_MODULES), so a spare holds it already. The process that creates story actors (a client:
the gateway, the CLI, a benchmark) asks for ``spare_workers`` of them when it first activates a
story, and for one more after each activation, so that the next one finds a spare. Best effort: any
failure (another Ray version, Ray Client, a job with a runtime environment, whose workers would not
fit) leaves activation as it was, a process start.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# No `import ray` here: the dev stack reads PRELOAD_MODULES before Ray may be imported (RAY_AUTH_MODE).

log = logging.getLogger(__name__)

#: what a story actor imports, preloaded by every worker of a cluster this project starts (``ray start``
#: with ``RAY_preload_python_modules``, or ``ray.init(_system_config=ray_system_config())``) while it
#: starts: a spare then holds them when a story activates on it (~0.3-0.5 s here otherwise)
PRELOAD_MODULES = ("fleet_actors.actors.story_actor", "fleet_actors.composition")
#: seconds the raylet keeps a spare beyond its own count of idle workers (one per free CPU, kept until
#: used); a spare past this is stopped if the pool holds more
KEEP_ALIVE_SECONDS = 60
#: a process asks for at most ``spare_workers`` spares in this many seconds: each activation asks for
#: a replacement, but during a burst actors also start on new processes, and the spares asked for
#: meanwhile would pile up (each an idle process of ~50 MB)
REQUEST_WINDOW = 10.0
#: seconds to wait for the raylet to take the request (it answers at once; the workers start after)
REQUEST_TIMEOUT = 5.0


def ray_system_config() -> dict[str, Any]:
    """``_system_config`` for a local Ray runtime this project starts with ``ray.init``."""
    return {"preload_python_modules": list(PRELOAD_MODULES)}


class SpareWorkers:
    """Keeps ``count`` started workers ready for this process's story actors (one pool per Ray job)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._asked: deque[float] = deque()  # when each spare of the last REQUEST_WINDOW was asked for
        self._first = True

    def activated(self, count: int) -> None:
        """A story actor was just created, on a spare or on a new process: ask for its replacement
        (for ``count`` spares the first time), unless ``count`` were asked for in REQUEST_WINDOW."""
        now = self._clock()
        while self._asked and now - self._asked[0] >= REQUEST_WINDOW:
            self._asked.popleft()
        wanted = min(count if self._first else 1, count - len(self._asked))
        if wanted > 0 and prestart(wanted):
            self._first = False
            self._asked.extend([now] * wanted)


#: the spares of this process's Ray job (the raylet starts a job's workers for that job alone)
SPARES = SpareWorkers()


def prestart(count: int, keep_alive_seconds: int = KEEP_ALIVE_SECONDS) -> bool:
    """Ask the local raylet to start ``count`` idle workers for this job; returns at once (False when
    it cannot be asked: Ray not joined, Ray Client, a job runtime environment)."""
    try:
        request = _request(count, keep_alive_seconds)
        if request is None:
            return False
        future = _raylet(*_local_raylet()).PrestartWorkers.future(request, timeout=REQUEST_TIMEOUT)
    except Exception:  # a private API of Ray: never let it fail an activation
        log.debug("cannot ask the raylet for spare workers", exc_info=True)
        return False
    future.add_done_callback(_report)
    return True


def _request(count: int, keep_alive_seconds: int) -> Any | None:
    import ray

    if count < 1 or not ray.is_initialized() or ray.util.client.ray.is_connected():
        return None
    context = ray.get_runtime_context()
    if context.runtime_env:  # the workers would not fit the actors (their runtime env hash differs)
        return None
    from ray.core.generated import common_pb2, node_manager_pb2

    request: Any = node_manager_pb2.PrestartWorkersRequest  # type: ignore[attr-defined]  # generated, no stubs
    return request(
        language=common_pb2.PYTHON,  # type: ignore[attr-defined]
        job_id=bytes.fromhex(context.get_job_id()),
        keep_alive_duration_secs=keep_alive_seconds,
        num_workers=count,
    )


def _local_raylet() -> tuple[str, int]:
    import ray

    return _raylet_address(ray.get_runtime_context().get_node_id())


@functools.cache
def _raylet_address(node_id: str) -> tuple[str, int]:
    import ray

    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["NodeManagerAddress"], int(node["NodeManagerPort"])
    raise LookupError(f"node {node_id} is not in the cluster's node table")


@functools.cache
def _raylet(host: str, port: int) -> Any:
    from ray._private.grpc_utils import init_grpc_channel  # with the cluster's auth token, when set
    from ray.core.generated import node_manager_pb2_grpc

    return node_manager_pb2_grpc.NodeManagerServiceStub(init_grpc_channel(f"{host}:{port}"))


def _report(future: Any) -> None:
    error = future.exception()
    if error is not None:
        log.debug("the raylet did not start spare workers: %s", error)
