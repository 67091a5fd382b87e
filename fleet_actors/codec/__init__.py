"""Bytes <-> domain events. Every read path decodes through :func:`decode_event`, which upcasts."""

from fleet_actors.codec import upcasters as _upcasters  # noqa: F401 - registers every upcaster
from fleet_actors.codec.events import CURRENT_VERSIONS, decode_event, decode_events, encode_event, event_type_of
from fleet_actors.codec.upcasting import UPCASTERS, Upcaster, upcast

__all__ = [
    "CURRENT_VERSIONS",
    "UPCASTERS",
    "Upcaster",
    "decode_event",
    "decode_events",
    "encode_event",
    "event_type_of",
    "upcast",
]
