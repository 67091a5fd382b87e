"""Spare Ray worker processes, started ahead of need, so that a story actor activates on one instead of
waiting for a process to start.

Ray runs every actor in a worker process of its own, and a story that activates (first use, or again
after passivation) waits for a new process to start: 1.4-1.8 s of the 2 s cold start measured on a
loaded 2-core machine. The raylet keeps a pool of started, idle workers and places a new actor on one
of them when one fits (the same job or none yet, the same runtime environment, never used). It fills that pool by itself
only for the first driver; its ``PrestartWorkers`` call (what Ray's core worker asks for a backlog of
tasks) starts more on request and keeps them for a while, beyond its limit of idle workers.

Every worker of a cluster this project starts also imports the story actor's code while it starts, and
then freezes what it imported out of the garbage collector's sight (PRELOAD_MODULES, actors/preload.py):
a spare holds the code already, and the first snapshot decode on it no longer pays for a full
collection over Ray's ~100,000 objects (80 of a warm activation's ~100 ms of CPU here).

The spares belong to no job: the raylet hands them to the first actor of any job that fits (same
runtime environment), so the gateway, the CLI and short-lived drivers share them, and a driver's exit
does not take them along. The process that creates story actors (a client: the gateway, the CLI, a
benchmark) asks for ``spare_workers`` of them when it first activates a story and for a replacement
after each activation (once the activation is done, not to compete with it for the CPU), keeping
``spare_workers`` in its count; at most ``spare_workers`` are asked for within START_SECONDS, so
that a burst of activations, which also start new processes while spares are still starting, does
not pile idle spares up. Best effort: any failure (another Ray version, Ray Client, a job with a
runtime environment, whose workers would not fit) leaves activation as it was, a process start.
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
PRELOAD_MODULES = ("fleet_actors.actors.preload",)
#: seconds the raylet keeps a spare beyond its own count of idle workers (one per free CPU, kept until
#: used); a spare past this is stopped if the pool holds more, and the client counts it gone. Long
#: enough that stories passivated after a few idle minutes come back on one
KEEP_ALIVE_SECONDS = 600
#: a process asks for at most ``spare_workers`` spares in this many seconds (about the time a worker
#: takes to start on a busy 2-core machine): during a burst, actors also start on new processes while
#: the spares are starting, and replacements asked for each would pile up (each an idle process of
#: ~70 MB that also costs ~6 ms of CPU per second, docs/benchmarks.md "Idle stack")
START_SECONDS = 2.0
#: seconds to wait for the raylet to take the request (it answers at once; the workers start after)
REQUEST_TIMEOUT = 5.0


def ray_system_config() -> dict[str, Any]:
    """``_system_config`` for a local Ray runtime this project starts with ``ray.init``."""
    return {"preload_python_modules": list(PRELOAD_MODULES)}


class SpareWorkers:
    """Keeps ``count`` started workers ready for this process's story actors."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._spares: deque[float] = deque()  # when each spare still counted as ready was asked for
        self._asked: deque[float] = deque()  # when each spare of the last START_SECONDS was asked for

    def activated(self, count: int) -> None:
        """A story actor was just activated, on a spare or on a new process: it took the oldest spare
        (if any is counted); ask for as many as the pool lacks, within ``count`` per START_SECONDS."""
        now = self._clock()
        while self._spares and now - self._spares[0] >= KEEP_ALIVE_SECONDS:
            self._spares.popleft()  # the raylet may have stopped it
        if self._spares:
            self._spares.popleft()
        while self._asked and now - self._asked[0] >= START_SECONDS:
            self._asked.popleft()
        wanted = min(count - len(self._spares), count - len(self._asked))
        if wanted > 0 and prestart(wanted):
            self._spares.extend([now] * wanted)
            self._asked.extend([now] * wanted)


#: the spares this process keeps
SPARES = SpareWorkers()


def prestart(count: int, keep_alive_seconds: int = KEEP_ALIVE_SECONDS) -> bool:
    """Ask the local raylet to start ``count`` idle workers for any job; returns at once (False when
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
    return request(  # no job_id: workers of no job, which the raylet assigns to the first job that uses one
        language=common_pb2.PYTHON,  # type: ignore[attr-defined]
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
