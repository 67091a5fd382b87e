"""Valkey: the hot context documents, processed-event keys and consumer offsets."""

from fleet_actors.adapters.valkey.context_cache import (
    ContextCache,
    ContextDocument,
    translate_valkey_error,
    valkey_errors,
)

__all__ = ["ContextCache", "ContextDocument", "translate_valkey_error", "valkey_errors"]
