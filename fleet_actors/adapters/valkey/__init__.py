"""Valkey: the context documents, the projectors' control records, the dead-letter index and
persisted rehydration bundles. Every key is spelled in :mod:`fleet_actors.adapters.valkey.keys`."""

from fleet_actors.adapters.valkey.active_documents import ActiveDocuments
from fleet_actors.adapters.valkey.bundle_store import BundleStore
from fleet_actors.adapters.valkey.context_cache import (
    ContextCache,
    connect_valkey,
    translate_valkey_error,
    valkey_client,
    valkey_errors,
)
from fleet_actors.adapters.valkey.dead_letter_index import ValkeyDeadLetterIndex
from fleet_actors.adapters.valkey.projection_checkpoints import ValkeyProjectionCheckpoints
from fleet_actors.adapters.valkey.projection_control import ValkeyProjectionControl
from fleet_actors.ports.read_models import ContextDocument

__all__ = [
    "ActiveDocuments",
    "BundleStore",
    "ContextCache",
    "ContextDocument",
    "ValkeyDeadLetterIndex",
    "ValkeyProjectionCheckpoints",
    "ValkeyProjectionControl",
    "connect_valkey",
    "translate_valkey_error",
    "valkey_client",
    "valkey_errors",
]
