"""NATS JetStream: the event store (single source of truth)."""

from fleet_actors.adapters.jetstream.connection import (
    connect_nats,
    ensure_event_stream,
    nats_errors,
    translate_nats_error,
)
from fleet_actors.adapters.jetstream.event_store import JetStreamEventStore

__all__ = ["JetStreamEventStore", "connect_nats", "ensure_event_stream", "nats_errors", "translate_nats_error"]
