"""Projector actors: ``FLEET_PROJECTORS`` detached actors, each owning a share of the partitions,
each running one projection runner (``projections/runner.py``): the built-in read models by
default, or any projection (a user's, or version n of a built-in read model) with ``host_projection``.

Ray restarts a projector that dies (``max_restarts``); its durable consumers (one per partition)
resume at the first unacknowledged event. Consumers are named after partitions, not projectors, so
changing the pool size only moves partitions between actors: ``start_projectors`` stops the actors
of another pool size. Consumers of an older naming scheme are orphans: it starts the partition
consumers where the slowest of them stood and deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

import ray

from fleet_actors.actors.naming import find_live, get_or_create
from fleet_actors.adapters.jetstream.consumers import prepare_partition_consumers
from fleet_actors.composition import (
    open_projection_runner,
    open_projector,
    open_read_model_version,
    open_read_model_versions,
)
from fleet_actors.errors import BackendUnavailable
from fleet_actors.observability import logs, tracing
from fleet_actors.observability.metrics import configure as metrics_configure
from fleet_actors.observability.metrics import metrics
from fleet_actors.projections.api import Projection, load
from fleet_actors.projections.policy import (
    DEFAULT_POLICY,
    LIVE_CONSUMERS,
    ProjectorPolicy,
    consumer_name,
    owned_partitions,
    partition_consumer_name,
    snapshot_consumer_name,
)
from fleet_actors.projections.runner import ProjectionRunner
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: seconds between two looks at the versions readers read (the live projectors follow them)
RETARGET_CHECK_SECONDS = 2.0
PROJECTOR_PREFIX = "fleet:projector:"
CONSUMER_PREFIX = "projector-"
#: actors hosting another projection: ``fleet:projection:{name}-v{n}:{i}-of-{count}``
HOSTED_PREFIX = "fleet:projection:"


@dataclass(frozen=True)
class HostedProjection:
    """What a projector actor runs besides the built-in read models: ``module:attribute`` of a user
    projection (importable on the cluster's workers), or version n of a built-in read model."""

    target: str = ""
    #: ``documents`` or ``graph`` for version ``version`` of a built-in read model (blue/green)
    read_model: str = ""
    version: int = 0

    async def open(self, settings: Settings) -> Projection:
        if self.read_model:
            return await open_read_model_version(settings, self.read_model, self.version)
        return load(self.target)


class ProjectorActor:
    def __init__(
        self, settings: Settings, index: int, count: int, policy: ProjectorPolicy = DEFAULT_POLICY,
        start_sequence: int | None = None, hosted: HostedProjection | None = None,
    ) -> None:  # fmt: skip
        self._settings = settings
        self._hosted = hosted
        self._index, self._count = index, count
        self._policy = policy
        self._start_sequence = start_sequence
        tracing.configure(settings)
        metrics_configure(settings)
        logs.install_record_context()
        self._stop = asyncio.Event()
        self._projector: ProjectionRunner | None = None
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = self._policy.backoff_initial
        while not self._stop.is_set():
            try:
                projector = await self._open()
            except Exception as error:  # servers still starting, or down: keep trying, never die
                log.warning("projector %s cannot start yet: %s", self._index, error)
            else:
                self._projector = projector
                self._ready.set()
                label = projector.names.label if self._hosted else consumer_name(self._index, self._count)
                up = metrics().projector_up.child(label)
                up.set(1)
                round_stop = asyncio.Event()
                watcher = asyncio.create_task(self._until_stopped_or_retargeted(projector, round_stop))
                try:
                    await projector.run(round_stop)
                    continue  # stopped, or the readers were switched: reopened on the versions they read
                except Exception:  # a failure run() does not wait out itself: start afresh, never die
                    log.exception("projector %s failed; reopening it", self._index)
                finally:
                    round_stop.set()
                    await asyncio.gather(watcher, return_exceptions=True)
                    up.set(0)
                    await projector.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._policy.backoff_max)

    async def _until_stopped_or_retargeted(self, projector: ProjectionRunner, round_stop: asyncio.Event) -> None:
        """End the runner's round when the actor stops or, for the built-in read models, when another
        version was promoted (``projections promote``): reopened, the runner writes that one."""
        pointers = None
        try:
            while not round_stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RETARGET_CHECK_SECONDS)
                if self._stop.is_set():
                    break
                if self._hosted is not None:
                    continue
                with contextlib.suppress(Exception):  # Valkey away: keep writing what it writes
                    pointers = pointers or await open_read_model_versions(self._settings)
                    wanted = await pointers.get()
                    if wanted != projector.progress.targets:
                        log.info("projector %s: promoted %s, it wrote %s: reopening", self._index, wanted,
                                 projector.progress.targets)  # fmt: skip
                        break
        finally:
            round_stop.set()
            if pointers is not None:
                with contextlib.suppress(Exception):
                    await pointers.close()

    async def _open(self) -> ProjectionRunner:
        if self._hosted is None:
            return await open_projector(self._settings, self._index, self._count, self._policy, self._start_sequence)
        projection = await self._hosted.open(self._settings)
        return await open_projection_runner(self._settings, projection, self._index, self._count, self._policy)

    async def wait_ready(self, timeout: float = 60.0) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._ready.is_set()

    def status(self) -> dict[str, Any]:
        projector = self._projector
        stats = dataclasses.asdict(projector.progress) if projector else {}
        return {
            "projector": projector.worker if projector else consumer_name(self._index, self._count),
            "partitions": projector.partitions if projector else [],
            "ready": self._ready.is_set(),
            **stats,
        }

    async def stop(self) -> None:
        """Finish the batch in hand, then exit (the consumer keeps its position)."""
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 30)
        ray.actor.exit_actor()


@functools.cache
def projector_actor_class() -> Any:
    # Restarted after a crash; an intentional stop() (exit_actor) is final, and not retried.
    return ray.remote(max_restarts=-1)(ProjectorActor)


def projector_actor_name(index: int, count: int) -> str:
    return f"{PROJECTOR_PREFIX}{index}-of-{count}"


async def prepare_consumers(settings: Settings) -> int | None:
    """Delete orphaned projector consumers; returns where missing partition consumers must start from."""
    wanted = {partition_consumer_name(LIVE_CONSUMERS, p) for p in range(settings.partitions)}
    return await prepare_partition_consumers(
        settings, wanted, prefix=CONSUMER_PREFIX, keep_snapshot_consumer=snapshot_consumer_name(LIVE_CONSUMERS)
    )


def start_projectors(settings: Settings, policy: ProjectorPolicy = DEFAULT_POLICY, timeout: float = 120) -> list[Any]:
    """Create (or find) the pool's actors and wait until each has bound its consumer."""
    start = asyncio.run(prepare_consumers(settings)) if not _in_event_loop() else None
    _stop_other_pool_sizes(settings)
    handles = [
        get_or_create(
            projector_actor_class(),
            projector_actor_name(i, settings.projectors),
            settings,
            settings,
            i,
            settings.projectors,
            policy,
            start,
        )
        for i in range(settings.projectors)
    ]
    ready = ray.get([h.wait_ready.remote(timeout) for h in handles])
    if not all(ready):
        raise BackendUnavailable("projectors could not start; check NATS, Valkey and the graph database")
    return handles


def _stop_other_pool_sizes(settings: Settings) -> None:
    """Actors of an earlier pool size would share partitions with the new pool: stop them first."""
    ours = {projector_actor_name(i, settings.projectors) for i in range(settings.projectors)}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] != settings.ray_namespace or not name.startswith(PROJECTOR_PREFIX) or name in ours:
            continue
        with contextlib.suppress(ValueError, ray.exceptions.RayActorError):
            ray.get(ray.get_actor(name, namespace=settings.ray_namespace).stop.remote())


def running_projectors(settings: Settings) -> list[str]:
    """Names of this pool's projector actors alive now (any pool size) in the settings' namespace."""
    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == settings.ray_namespace and entry["name"].startswith(PROJECTOR_PREFIX)
    )


def ensure_projectors(settings: Settings, policy: ProjectorPolicy = DEFAULT_POLICY, timeout: float = 120) -> bool:
    """Start the pool unless one already runs in the namespace. True if this call started it: a tool
    stops only what it started, so a pool that was running (a `dev up` cluster's) is left alone."""
    if running_projectors(settings):
        return False
    start_projectors(settings, policy, timeout)
    return True


def stop_projectors(settings: Settings) -> None:
    handles = [find_live(projector_actor_name(i, settings.projectors), settings) for i in range(settings.projectors)]
    for handle in filter(None, handles):
        with contextlib.suppress(ray.exceptions.RayActorError):
            ray.get(handle.stop.remote())


def projector_status(settings: Settings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(settings.projectors):
        try:
            handle = ray.get_actor(projector_actor_name(i, settings.projectors), namespace=settings.ray_namespace)
            reply: ray.ObjectRef[dict[str, Any]] = handle.status.remote()
            out.append(ray.get(reply, timeout=10))
        except (ValueError, ray.exceptions.RayError, TimeoutError):
            out.append({"projector": consumer_name(i, settings.projectors), "ready": False})
    return out


def hosted_actor_name(projection_id: str, index: int, count: int) -> str:
    return f"{HOSTED_PREFIX}{projection_id}:{index}-of-{count}"


def host_projection(
    settings: Settings, hosted: HostedProjection, projection_id: str, count: int = 1,
    policy: ProjectorPolicy = DEFAULT_POLICY, timeout: float = 120,
) -> list[Any]:  # fmt: skip
    """Run ``count`` runners of a projection in detached projector actors (restarted after a crash,
    like the built-in pool) and wait until each has bound its consumers. Actors of another count
    for the same projection are stopped first (they would share partitions)."""
    owned_partitions(count - 1, count, settings.partitions)  # raises for a count above the partitions
    stop_hosted(settings, projection_id, keep_count=count)
    actor, name = projector_actor_class(), functools.partial(hosted_actor_name, projection_id)
    handles = [
        get_or_create(actor, name(i, count), settings, settings, i, count, policy, None, hosted) for i in range(count)
    ]
    ready = ray.get([h.wait_ready.remote(timeout) for h in handles])
    if not all(ready):
        stop_hosted(settings, projection_id)
        raise BackendUnavailable(f"{projection_id}: its runners could not start (the actors' logs say why)")
    return handles


def hosted_projections(settings: Settings) -> dict[str, list[str]]:
    """Projection id -> the names of the actors hosting it now."""
    out: dict[str, list[str]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] == settings.ray_namespace and name.startswith(HOSTED_PREFIX):
            out.setdefault(name[len(HOSTED_PREFIX) :].rsplit(":", 1)[0], []).append(name)
    return out


def stop_hosted(settings: Settings, projection_id: str, keep_count: int = 0) -> list[str]:
    """Stop the actors hosting a projection (except those of a pool of ``keep_count``); returns their names."""
    keep = {hosted_actor_name(projection_id, i, keep_count) for i in range(keep_count)}
    stopped = []
    for name in hosted_projections(settings).get(projection_id, []):
        if name in keep:
            continue
        with contextlib.suppress(ValueError, ray.exceptions.RayActorError):
            ray.get(ray.get_actor(name, namespace=settings.ray_namespace).stop.remote())
        stopped.append(name)
    return stopped


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
