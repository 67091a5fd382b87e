"""The public projection API: a read model of your own, fed from the whole history of the log.

A projection is a plain class::

    class DecisionsByRole:
        name = "decisions-by-role"       # [A-Za-z0-9_-], at most 40 characters
        version = 1                      # a new version is a new projection (new consumers, from the start)

        async def apply(self, batch: Mapping[str, Sequence[EventEnvelope]]) -> None:
            ...                          # each story's events in order, none applied before

        # optional: the target keeps its own checkpoint, in the same transaction as its writes
        async def applied_versions(self, story_ids: Sequence[str]) -> Mapping[str, int]: ...

        # optional: compare the target with a replay of the story's events (returns the differences)
        async def verify(self, story_id: str, events: Sequence[EventEnvelope]) -> Sequence[str]: ...

        # optional: called between batches and when idle (housekeeping of the target)
        async def tick(self) -> None: ...

Inside ``apply``, :func:`batch_positions` gives the stream positions the batch was delivered up to
(``{stream}.{consumer}`` -> last stream sequence), for a target that records them with its writes.

Register it by name (``register(DecisionsByRole())`` or a factory) and run it with
:func:`fleet_actors.composition.open_projection_runner`; the runner
(:mod:`fleet_actors.projections.runner`) gives it durable consumers per partition
(``proj-{name}-v{version}-partition-{p}``), order per story, a version guard, batching, catch-up
from the archive, dead letters and a status row. See ``docs/projections.md``.
"""

from __future__ import annotations

import contextvars
import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast, runtime_checkable

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.errors import ConfigurationError

__all__ = [
    "Batch",
    "Projection",
    "batch_positions",
    "consumer_prefix",
    "get",
    "load",
    "projection_id",
    "register",
    "registered",
    "unregister",
    "validate",
]

#: story id -> that story's new events, in version order
Batch = Mapping[str, Sequence[EventEnvelope]]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


@runtime_checkable
class Projection(Protocol):
    """What the framework calls. ``applied_versions`` and ``verify`` are optional (looked up by name)."""

    name: str
    version: int

    async def apply(self, batch: Batch) -> None:
        """Apply each story's events, in order. Raise a ``fleet_actors.errors.Retryable`` (e.g.
        ``BackendUnavailable``) when the target is down: the batch is retried, never parked. Any
        other exception is the story's: retried ``max_deliver`` times, then the event is parked."""
        ...


def validate(projection: Projection) -> Projection:
    name = getattr(projection, "name", None)
    version = getattr(projection, "version", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(f"projection name {name!r} must be 1-40 characters of [A-Za-z0-9_-]", field="name")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigurationError(f"projection {name}: version {version!r} must be a positive integer", field="version")
    if not callable(getattr(projection, "apply", None)):
        raise ConfigurationError(f"projection {name}: no apply(batch) method", field="apply")
    return projection


def projection_id(projection: Projection) -> str:
    """``{name}-v{version}``: what its checkpoint, progress and dead letters are kept under."""
    return f"{projection.name}-v{projection.version}"


def consumer_prefix(projection: Projection) -> str:
    """Its durable consumers are ``{prefix}-partition-{p}``."""
    return f"proj-{projection_id(projection)}"


_positions: contextvars.ContextVar[Mapping[str, int] | None] = contextvars.ContextVar("positions", default=None)


def batch_positions() -> Mapping[str, int]:
    """While ``apply`` runs: the stream positions its batch was delivered up to, ``{stream}.{consumer}``
    -> last stream sequence (empty for a batch read from the archive or the log)."""
    return _positions.get() or {}


def applying_at(positions: Mapping[str, int]) -> contextvars.Token[Mapping[str, int] | None]:
    """For the runner: set the positions ``batch_positions`` answers (reset with the returned token)."""
    return _positions.set(positions)


def done_applying(token: contextvars.Token[Mapping[str, int] | None]) -> None:
    _positions.reset(token)


Factory = Callable[[], Projection]
_registry: dict[str, Factory] = {}


def register(projection: Projection | Factory, *, replace: bool = False) -> Projection:
    """Register a projection (or a class or factory of one) under its name; returns the projection."""
    is_factory = isinstance(projection, type) or not isinstance(projection, Projection)
    factory: Factory = cast(Factory, projection) if is_factory else (lambda: cast(Projection, projection))
    instance = validate(factory())
    if instance.name in _registry and not replace:
        raise ConfigurationError(f"projection {instance.name!r} is already registered", field="name")
    _registry[instance.name] = factory if is_factory else (lambda: instance)
    return instance


def unregister(name: str) -> None:
    _registry.pop(name, None)


def registered() -> list[str]:
    return sorted(_registry)


def get(name: str) -> Projection:
    """A registered projection by name (a fresh instance when a factory was registered)."""
    factory = _registry.get(name)
    if factory is None:
        raise ConfigurationError(f"no projection named {name!r} is registered", field="name")
    return validate(factory())


def load(path: str) -> Projection:
    """A projection from ``module:attribute`` (a projection, a class or a factory), registered on the way."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{path!r}: expected module:attribute", field="projection")
    # As `python -m` does: modules of the current directory (a console script's sys.path lacks it).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            f"{path!r}: no module {error.name!r} on the path (run from the directory that holds it, or install it)",
            field="projection",
        ) from error
    target = getattr(module, attribute, None)
    if target is None:
        raise ConfigurationError(f"{path!r}: module {module_name!r} has no {attribute!r}", field="projection")
    return register(target, replace=True)


def optional_hook(projection: Projection, hook: str) -> Callable[..., object] | None:
    method = getattr(projection, hook, None)
    return method if callable(method) else None


def describe(projection: Projection) -> dict[str, object]:
    return {
        "name": projection.name,
        "version": projection.version,
        "own_checkpoint": optional_hook(projection, "applied_versions") is not None,
        "verify": optional_hook(projection, "verify") is not None,
    }


def as_batch(events: Mapping[str, Sequence[EventEnvelope]]) -> Batch:
    return {story_id: tuple(story_events) for story_id, story_events in events.items() if story_events}
