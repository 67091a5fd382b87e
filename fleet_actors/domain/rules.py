"""Input rules shared by every command: id shape, text sizes, enumerations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from fleet_actors.domain.alternatives import MAX_ALTERNATIVE_REASON, MAX_ALTERNATIVES
from fleet_actors.domain.events import Alternative
from fleet_actors.errors import InvalidCommand

#: ids become NATS subject tokens, so they must not contain '.', '*', '>' or whitespace
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

E = TypeVar("E", bound=StrEnum)

MAX_TITLE = 200
MAX_TEXT = 10_000
MAX_SUMMARY = 50_000
MAX_SHORT = 64
MAX_DEPENDENCIES = 100
MAX_METADATA_ENTRIES = 32
MAX_METADATA_VALUE = 1_000
MAX_PROPERTIES = 64
#: a caller's key kept as a property may be large (a decision's `data` of ~10 kB is common)
MAX_PROPERTY_VALUE = 50_000
MAX_BATCH = 100
PRIORITY_RANGE = range(1, 6)
MAX_ESTIMATED_HOURS = 10_000


def check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidCommand(
            f"{field} must be 1-64 characters of letters, digits, '_' or '-', got {value!r:.80}", field=field
        )
    return value


def check_title(value: object, field: str = "title") -> str:
    text = check_text(value, field, MAX_TITLE)
    if not text.strip():
        raise InvalidCommand(f"{field} must not be empty", field=field)
    return text


def check_text(value: object, field: str, limit: int = MAX_TEXT, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidCommand(f"{field} must be a string", field=field)
    if len(value) > limit:
        raise InvalidCommand(f"{field} is {len(value)} characters long; the limit is {limit}", field=field)
    if required and not value.strip():
        raise InvalidCommand(f"{field} must not be empty", field=field)
    if not value.isascii():
        try:
            value.encode("utf-8")  # events are protobuf: their strings must be UTF-8
        except UnicodeEncodeError as error:
            raise InvalidCommand(
                f"{field} is not valid Unicode text (a lone surrogate at character {error.start})", field=field
            ) from None
    return value


def check_actor(value: object, field: str = "actor") -> str:
    """Who acts, recorded on every event of the command: short text without control characters."""
    text = check_text(value, field, MAX_SHORT)
    if _CONTROL.search(text):
        raise InvalidCommand(f"{field} must not contain control characters such as NUL", field=field)
    return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_expected_version(value: object, field: str = "expected_version") -> int | None:
    """None (no check) or the story version the caller last saw: a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidCommand(f"{field} must be a non-negative integer, got {value!r:.80}", field=field)
    return value


def check_ids(value: object, field: str, limit: int) -> tuple[str, ...]:
    """A list (or tuple) of ids; a lone string is refused, not taken as its characters."""
    if not isinstance(value, tuple | list):
        raise InvalidCommand(f"{field} must be a list of ids, got {type(value).__name__}", field=field)
    if len(value) > limit:
        raise InvalidCommand(f"{field} has {len(value)} entries; the limit is {limit}", field=field)
    return tuple(check_id(item, field) for item in value)


def check_choice(value: object, field: str, choices: type[E]) -> E:
    if isinstance(value, str):
        try:
            return choices(value.strip().upper())
        except ValueError:
            pass
    allowed = ", ".join(c.value for c in choices)
    raise InvalidCommand(f"{field} must be one of {allowed}, got {value!r:.80}", field=field)


def check_int(value: object, field: str, allowed: range) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise InvalidCommand(
            f"{field} must be an integer from {allowed.start} to {allowed.stop - 1}, got {value!r:.80}", field=field
        )
    return value


def check_label(value: object, field: str) -> str:
    """A short upper-case word such as a role or a decision type."""
    text = check_text(value, field, MAX_SHORT, required=True).strip().upper()
    if not re.fullmatch(r"[A-Z0-9_]+", text):
        raise InvalidCommand(f"{field} must be letters, digits or '_', got {value!r:.80}", field=field)
    return text


def check_alternatives(value: object, field: str = "alternatives") -> tuple[Alternative, ...]:
    if not isinstance(value, tuple) or not all(isinstance(a, Alternative) for a in value):
        raise InvalidCommand(f"{field} must be a tuple of Alternative values", field=field)
    if len(value) > MAX_ALTERNATIVES:
        raise InvalidCommand(f"{field} has {len(value)} entries; the limit is {MAX_ALTERNATIVES}", field=field)
    for index, alternative in enumerate(value):
        try:
            check_title(alternative.title, "title")
            check_text(alternative.reason, "reason", MAX_ALTERNATIVE_REASON)
        except InvalidCommand as error:
            raise InvalidCommand(f"{field}[{index}]: {error.message}", field=field) from None
    return value


def check_metadata(value: object, field: str = "metadata") -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidCommand(f"{field} must be a mapping of strings", field=field)
    if len(value) > MAX_METADATA_ENTRIES:
        raise InvalidCommand(f"{field} has {len(value)} entries; the limit is {MAX_METADATA_ENTRIES}", field=field)
    out = {}
    for key, item in value.items():
        check_text(key, f"{field} key", MAX_SHORT, required=True)
        out[key] = check_text(item, f"{field}[{key}]", MAX_METADATA_VALUE)
    return out


def check_properties(value: object, field: str = "properties") -> dict[str, str]:
    """Caller keys kept as they were sent: at most MAX_PROPERTIES, each value up to MAX_PROPERTY_VALUE."""
    if not isinstance(value, Mapping):
        raise InvalidCommand(f"{field} must be a mapping of strings", field=field)
    if len(value) > MAX_PROPERTIES:
        raise InvalidCommand(f"{field} has {len(value)} entries; the limit is {MAX_PROPERTIES}", field=field)
    out = {}
    for key, item in value.items():
        check_text(key, f"{field} key", MAX_SHORT, required=True)
        out[key] = check_text(item, f"{field}.{key}", MAX_PROPERTY_VALUE)
    return out
