"""What callers send to a story and what they get back, and how it crosses the Ray boundary."""

from __future__ import annotations

import copyreg
import dataclasses
import io
import operator
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleet_actors.codec.filling import fill_statement
from fleet_actors.domain.commands import Command
from fleet_actors.domain.events import SLOTTED_TYPES
from fleet_actors.domain.results import CommandResult
from fleet_actors.errors import IncompatibleRelease

__all__ = ["CommandRequest", "CommandResult", "pack", "unpack"]


@dataclass(frozen=True)
class CommandRequest:
    story_id: str
    command: Command
    #: idempotency key: resending it returns the first result and appends nothing
    command_id: str
    actor: str = ""
    #: optimistic concurrency from the caller's side: the story version they last saw
    expected_version: int | None = None
    #: secret patterns to redact from the events before they are appended (empty: none); each
    #: event's envelope lists the fields that were (domain/redaction.py)
    redaction: tuple[tuple[str, str], ...] = ()
    #: the caller's trace context (W3C ``traceparent``/``tracestate``) when tracing is on, else None
    trace: dict[str, str] | None = None


def pack(message: Any) -> bytes:
    """A story actor's request or reply as bytes, which Ray passes through without another layer.

    Ray would pickle the objects itself, through cloudpickle inside a msgpack frame: on the command
    path that costs several times the standard pickler's work on both sides of every call
    (docs/benchmarks.md). Only fleet-actors' own importable types travel this way, between processes
    of one Ray cluster, which already trust each other's pickles.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(message)
    return buffer.getvalue()


def unpack(data: bytes) -> Any:
    """The message :func:`pack` made; IncompatibleRelease if this code cannot read it (a rollout in
    progress: the sender runs another release of fleet-actors)."""
    try:
        return pickle.loads(data)
    except Exception as error:
        raise IncompatibleRelease(
            f"cannot read a story actor message ({type(error).__name__}: {error}): the client and the "
            "story actor run different fleet-actors releases; restart the story actors once every "
            "node runs the new release (docs/operations.md, upgrades)"
        ) from None


def _restorer(cls: type) -> Callable[[tuple[Any, ...]], Any]:
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    names = [field.name for field in dataclasses.fields(cls)]
    fill = fill_statement(cls, "value", [(name, f"values[{i}]") for i, name in enumerate(names)], scope)
    exec(f"def restore(values):\n    value = new(cls)\n    {fill}\n    return value\n", scope)  # our fields only
    restore: Callable[[tuple[Any, ...]], Any] = scope["restore"]
    return restore


def _reducer(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    names = [field.name for field in dataclasses.fields(cls)]
    values = operator.attrgetter(*names) if len(names) > 1 else (lambda value: (getattr(value, names[0]),))
    return lambda value: (_restored, (cls, values(value)))


def _restored(cls: type, values: tuple[Any, ...]) -> Any:
    return _RESTORERS[cls](values)


# The story actor's messages carry events, which are slotted frozen dataclasses. The pickling
# ``dataclasses`` gives those looks their fields up for every value, and made a history of events
# twice as slow to pack and to read back (docs/benchmarks.md, slotted events): each of them packs
# as its field values instead, restored by a function written out for its class.
_RESTORERS = {cls: _restorer(cls) for cls in SLOTTED_TYPES}
_DISPATCH = {**copyreg.dispatch_table, **{cls: _reducer(cls) for cls in SLOTTED_TYPES}}
