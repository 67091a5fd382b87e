"""fleet-actors: event-sourced story context on Ray actors, NATS JetStream, Neo4j and Valkey.

The public names load lazily: importing a submodule (the CLI, the domain) must not import Ray,
which reads its auth settings (RAY_AUTH_MODE) once, at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AsyncFleetClient": "fleet_actors.client",
    "FleetClient": "fleet_actors.client",
    "CommandResult": "fleet_actors.application.messages",
    "ContextView": "fleet_actors.application.read_models",
    "Settings": "fleet_actors.settings",
    "BackendUnavailable": "fleet_actors.errors",
    "ConcurrencyConflict": "fleet_actors.errors",
    "InvalidCommand": "fleet_actors.errors",
    "Projection": "fleet_actors.projections.api",
    "ProjectionTimeout": "fleet_actors.errors",
    "RuleViolation": "fleet_actors.errors",
    "StoryAlreadyExists": "fleet_actors.errors",
    "StoryError": "fleet_actors.errors",
    "StoryNotFound": "fleet_actors.errors",
}

__all__ = [
    "AsyncFleetClient",
    "BackendUnavailable",
    "CommandResult",
    "ConcurrencyConflict",
    "ContextView",
    "FleetClient",
    "InvalidCommand",
    "Projection",
    "ProjectionTimeout",
    "RuleViolation",
    "Settings",
    "StoryAlreadyExists",
    "StoryError",
    "StoryNotFound",
]

if TYPE_CHECKING:
    from fleet_actors.application.messages import CommandResult
    from fleet_actors.application.read_models import ContextView
    from fleet_actors.client import AsyncFleetClient, FleetClient
    from fleet_actors.errors import (
        BackendUnavailable,
        ConcurrencyConflict,
        InvalidCommand,
        ProjectionTimeout,
        RuleViolation,
        StoryAlreadyExists,
        StoryError,
        StoryNotFound,
    )
    from fleet_actors.projections.api import Projection
    from fleet_actors.settings import Settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fleet_actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
