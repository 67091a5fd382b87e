"""fleet-actors: event-sourced story context on Ray actors, NATS JetStream, Neo4j and Valkey."""

from fleet_actors.application.messages import CommandResult
from fleet_actors.client import AsyncFleetClient, FleetClient
from fleet_actors.errors import (
    BackendUnavailable,
    ConcurrencyConflict,
    InvalidCommand,
    RuleViolation,
    StoryAlreadyExists,
    StoryError,
    StoryNotFound,
)
from fleet_actors.settings import Settings

__all__ = [
    "AsyncFleetClient",
    "BackendUnavailable",
    "CommandResult",
    "ConcurrencyConflict",
    "FleetClient",
    "InvalidCommand",
    "RuleViolation",
    "Settings",
    "StoryAlreadyExists",
    "StoryError",
    "StoryNotFound",
]
