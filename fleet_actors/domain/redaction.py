"""Secret redaction: pure functions that replace secrets in text with a marker.

Agents paste what they see, and what they see sometimes holds a password, an API key, a bearer
token, a private key or a connection string with credentials. The log is immutable and archived,
so the gateway redacts before appending (``Settings.redact_on_append``) and again in every
response carrying stored text (``Settings.redact_responses``, for what was stored before).

A pattern is ``(name, regex)``. If the regex has a group named ``secret`` only that group is
replaced (``password=[REDACTED:password]`` keeps the key); otherwise the whole match is. The marker
is ``[REDACTED:{name}]``. Redacting is idempotent: a marker is never redacted again. Operators add
patterns with ``FLEET_REDACT_PATTERNS`` (a JSON object of name -> regex, see :func:`parse_patterns`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, TypeVar

from fleet_actors.errors import ConfigurationError

Pattern = tuple[str, str]
T = TypeVar("T")

MARKER = "[REDACTED:{name}]"

#: the built-in patterns, in the order they are applied (the widest first)
BUILTIN_PATTERNS: tuple[Pattern, ...] = (
    # a PEM private key block, to its END line (or to the end of the text if it was cut off)
    (
        "private_key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
    ),
    # user:password@ in a URL-style connection string: only the password goes
    ("connection_string", r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:(?P<secret>[^\s/@]+)@"),
    # "Bearer <JWT>" or "Bearer <opaque token with a digit, 20+ characters>"
    (
        "bearer_token",
        r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_.+/=-]*"
        r"|(?=[A-Za-z_~+/-]*\d)[A-Za-z0-9_~+/-]{20,}=*)",
    ),
    # a bare JWT (header.payload.signature, both JSON parts base64url of '{"')
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # sk-... API keys (OpenAI, Anthropic and alike): a run of 20+ key characters with a digit
    ("api_key", r"\bsk-(?:[A-Za-z0-9]+-){0,3}(?=[A-Za-z0-9_]*\d)[A-Za-z0-9_]{20,}"),
    # password=..., "api_key": "...", client_secret: x9... ; "key: value" only for a quoted value or
    # a token with a digit or symbol, so that prose ("Password: must be 12 characters") stays
    (
        "password",
        r"(?i)\b(?:password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|access[_-]?token|auth[_-]?token"
        r"|api[_-]?token|private[_-]?key)\b[\"']?"
        r"(?:\s*=\s*(?P<secret>\"[^\"\n]*\"|'[^'\n]*'|[^\s,;\"'&]+)"
        r"|\s*:\s*(?P<secret2>\"[^\"\n]+\"|'[^'\n]+'|(?=[^\s,;\"']*[0-9!#$%^*()+=?~])[^\s,;\"']{6,}))",
    ),
)

_REFERENCES = frozenset({"dependencies", "src_id", "dst_id"})
_MARKER_TEXT = re.compile(r"\[REDACTED:[A-Za-z0-9_-]+\]")


def parse_patterns(text: str) -> tuple[Pattern, ...]:
    """Operator patterns from a JSON object ``{"name": "regex", ...}``.

    Raises:
        ConfigurationError: not a JSON object of strings, a bad name, or a regex that does not compile.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"FLEET_REDACT_PATTERNS is not JSON: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigurationError('FLEET_REDACT_PATTERNS must be a JSON object {"name": "regex", ...}')
    out = []
    for name, regex in data.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
            raise ConfigurationError(f"FLEET_REDACT_PATTERNS: name {name!r} must be 1-40 of [A-Za-z0-9_-]")
        try:
            re.compile(regex)
        except re.error as error:
            raise ConfigurationError(f"FLEET_REDACT_PATTERNS: {name}: {error}") from None
        out.append((name, regex))
    return tuple(out)


def patterns_with(extra: str) -> tuple[Pattern, ...]:
    """The built-in patterns plus an operator's (``Settings.redact_patterns``; empty: none)."""
    return BUILTIN_PATTERNS + (parse_patterns(extra) if extra.strip() else ())


@functools.cache
def _compiled(patterns: tuple[Pattern, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(regex)) for name, regex in patterns)


def redact_text(text: str, patterns: tuple[Pattern, ...] = BUILTIN_PATTERNS) -> tuple[str, tuple[str, ...]]:
    """``text`` with every secret replaced by its marker, and the names of the patterns that matched."""
    if not text:
        return text, ()
    found: list[str] = []
    for name, regex in _compiled(patterns):
        if regex.search(text) is None:
            continue  # most texts hold no secret: one scan, and no replacement set up for it
        marker = MARKER.format(name=name)

        def replace(match: re.Match[str], marker: str = marker, name: str = name) -> str:
            groups = [g for g in ("secret", "secret2") if g in match.re.groupindex and match.group(g) is not None]
            whole = match.group(0)
            if not groups:
                if _MARKER_TEXT.fullmatch(whole):
                    return whole
                found.append(name)
                return marker
            start, end = match.span(groups[0])
            secret = match.group(groups[0])
            if len(secret) >= 2 and secret[0] == secret[-1] and secret[0] in "\"'":
                start, end = start + 1, end - 1  # keep the quotes: JSON and YAML stay well-formed
            if _MARKER_TEXT.fullmatch(secret.strip("\"'")):
                return whole
            found.append(name)
            offset = match.start()
            return whole[: start - offset] + marker + whole[end - offset :]

        text = regex.sub(replace, text)
    return text, tuple(dict.fromkeys(found))


def redact_value(value: T, patterns: tuple[Pattern, ...] = BUILTIN_PATTERNS, path: str = "") -> tuple[T, list[str]]:
    """Redact every text inside ``value``: a string, a mapping of strings, a tuple, or a frozen
    dataclass (its fields, recursively). Ids (fields named ``*_id``, ``dependencies``) are left
    alone: they are references, and the id rules already keep them to ``[A-Za-z0-9_-]``.

    Returns:
        The redacted value (``value`` itself when nothing changed) and the paths of the changed
        texts, e.g. ``["summary", "properties.data", "alternatives[0].reason"]``.
    """
    changed: list[str] = []
    return _redact(value, patterns, path, changed), changed


class RedactionMemo:
    """:func:`redact_value` (the value only, not the paths) for a reader that shows the same values
    again and again: each frozen dataclass redacted is remembered by identity with its result.

    A story's states share their values (an event replaces the few it changes, and a temporal read
    folds from a snapshot the reader keeps), so redacting a state that was shown before redacts only
    what is new: every regex over every text of a 10,000-event story's state took ~80 ms, most of a
    GetContextAtTime. Texts are remembered by value too (roles, statuses, kinds, authors recur
    across a state's values). Remembers at most ``size`` values and texts (then starts afresh). Not
    thread-safe.
    """

    def __init__(self, patterns: tuple[Pattern, ...] = BUILTIN_PATTERNS, size: int = 100_000) -> None:
        self._patterns, self._size = patterns, size
        #: id(value) -> (the value, kept so that its id stays its own; its redacted form); and
        #: text -> (the text, its redacted form, or None when it holds no secret)
        self._seen: dict[Any, tuple[Any, Any]] = {}

    def __call__(self, value: T) -> T:
        if len(self._seen) > self._size:
            self._seen.clear()
        redacted: T = _redact(value, self._patterns, None, [], self._seen)
        return redacted


#: types whose values hold no text: returned as they are, without a look at their shape
_NO_TEXT: frozenset[type] = frozenset({int, float, bool, type(None), bytes, datetime, date})


def _redact(
    value: Any,
    patterns: tuple[Pattern, ...],
    path: str | None,
    changed: list[str],
    seen: dict[Any, tuple[Any, Any]] | None = None,
) -> Any:
    """``path`` None: nobody asks for the paths (a :class:`RedactionMemo`), so none are built.
    ``seen``: a memo's values (``changed`` then misses what it already held).

    A state is tens of thousands of values, most of them ids, numbers and short texts: the exact
    type is looked at first, the abstract Mapping and the dataclass check only for what is left."""
    kind: type = type(value)  # as a plain `type` (Hashable for the cache)
    if kind is str or (kind not in _NO_TEXT and isinstance(value, str)):
        if seen is not None and (known := seen.get(value)) is not None:
            # An equal text is often another object: a clean one stays the object it is, or every
            # value holding it would look changed and be copied.
            return value if known[1] is None else known[1]
        text, found = redact_text(value, patterns)
        if found:
            changed.append(path or "text")
        if seen is not None:
            seen[value] = (value, text if found else None)
        return text if found else value
    if kind in _NO_TEXT:
        return value
    if kind is tuple or isinstance(value, tuple):
        if path is None:
            redacted = tuple([_redact(v, patterns, None, changed, seen) for v in value])
        else:
            redacted = tuple(_redact(v, patterns, f"{path}[{i}]", changed, seen) for i, v in enumerate(value))
        return redacted if any(a is not b for a, b in zip(redacted, value, strict=True)) else value
    if kind is dict or isinstance(value, Mapping):
        items = {k: _redact(v, patterns, _child(path, k), changed, seen) for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in items) else value
    fields = _text_fields(kind)
    if fields is None:
        return value
    if seen is not None:
        known = seen.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        result = _redact_fields(value, fields, patterns, path, changed, seen)
        seen[id(value)] = (value, result)
        return result
    return _redact_fields(value, fields, patterns, path, changed, seen)


def _child(path: str | None, name: object) -> str | None:
    if path is None:
        return None
    return f"{path}.{name}" if path else str(name)


@functools.cache
def _text_fields(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass that may hold text to redact: all but ids and references (None:
    ``cls`` is not a dataclass)."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls) if not (f.name.endswith("_id") or f.name in _REFERENCES))


def _redact_fields(
    value: Any,
    fields: tuple[str, ...],
    patterns: tuple[Pattern, ...],
    path: str | None,
    changed: list[str],
    seen: dict[Any, tuple[Any, Any]] | None,
) -> Any:
    """A frozen dataclass with its texts redacted (itself when none changed)."""
    updates = {}
    for name in fields:
        old = getattr(value, name)
        new = _redact(old, patterns, _child(path, name), changed, seen)
        if new is not old:
            updates[name] = new
    if not updates:
        return value
    # Filled as __init__ would, without re-running it (nor a __post_init__) over the kept fields;
    # object.__setattr__ sets a slot (events) as well as a __dict__ entry (states).
    copy = object.__new__(type(value))
    for field in dataclasses.fields(value):
        object.__setattr__(copy, field.name, updates.get(field.name, getattr(value, field.name)))
    return copy
