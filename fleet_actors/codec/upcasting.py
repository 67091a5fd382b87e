"""The one registry of upcasters: functions that lift a stored payload from schema vN to vN+1.

Upcasters work on plain dicts (the payload's fields by name), before the domain dataclass is
built, so the domain only ever sees the current shape. Register with::

    @upcaster("decision_added", from_version=1)
    def upcast_decision_added_v1_v2(fields: dict) -> dict: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fleet_actors.errors import EventDecodeError

Fields = dict[str, object]
Upcaster = Callable[[Fields], Fields]


@dataclass(frozen=True)
class _Key:
    event_type: str
    from_version: int


UPCASTERS: dict[_Key, Upcaster] = {}


def upcaster(event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        key = _Key(event_type, from_version)
        if key in UPCASTERS:
            raise ValueError(f"two upcasters for {event_type} v{from_version}")
        UPCASTERS[key] = fn
        return fn

    return register


def upcast(event_type: str, version: int, current: int, fields: Fields) -> Fields:
    """Apply the chain vN -> ... -> current. Versions newer than this code are refused."""
    if version > current:
        raise EventDecodeError(
            f"{event_type} schema v{version} is newer than this code understands (v{current}); upgrade fleet-actors"
        )
    while version < current:
        step = UPCASTERS.get(_Key(event_type, version))
        if step is None:
            raise EventDecodeError(f"no upcaster for {event_type} v{version} -> v{version + 1}")
        fields = step(fields)
        version += 1
    return fields
