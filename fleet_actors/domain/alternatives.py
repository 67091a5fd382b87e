"""Alternatives considered for a decision: from free text or from structured values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from fleet_actors.domain.events import Alternative
from fleet_actors.errors import InvalidCommand

MAX_ALTERNATIVES = 20
MAX_ALTERNATIVE_REASON = 2_000

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")
# "title: reason", "title because reason", "title - reason" / "title \u2014 reason"
_SEPARATOR = re.compile(r"\s*:\s+|\s+because\s+|\s+[-\u2013\u2014]\s+", re.IGNORECASE)


def parse_alternatives(text: str) -> tuple[Alternative, ...]:
    """Free text, one alternative per line (or ';'), each "title: reason" or just a title.

    This is how agents wrote alternatives before they were structured; the v1->v2 upcaster of
    DecisionAdded uses it too, so old and new text read the same way.
    """
    out = []
    for raw in re.split(r"[\n;]", text):
        line = _BULLET.sub("", raw).strip()
        if not line:
            continue
        title, _, reason = (part.strip() for part in _split_once(line))
        out.append(Alternative(title, reason))
    return tuple(out)


def _split_once(line: str) -> tuple[str, str, str]:
    match = _SEPARATOR.search(line)
    if match is None:
        return line, "", ""
    return line[: match.start()], match.group(0), line[match.end() :]


def alternatives_from(value: str | Iterable[Alternative | str | tuple[str, str]] | None) -> tuple[Alternative, ...]:
    """Accept free text, ``Alternative`` values, plain titles or ``(title, reason)`` pairs."""
    if value is None:
        return ()
    if isinstance(value, str):
        return parse_alternatives(value)
    out = []
    for item in value:
        if isinstance(item, Alternative):
            out.append(item)
        elif isinstance(item, str):
            out.append(Alternative(item))
        elif isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append(Alternative(item[0], item[1]))
        else:
            raise InvalidCommand(
                f"each alternative must be a title, a (title, reason) pair or an Alternative, got {item!r:.80}",
                field="alternatives",
            )
    return tuple(out)


def alternatives_json(alternatives: Iterable[Alternative]) -> str:
    """The alternatives as the read models keep them: a JSON list of ``{"title", "reason"}``."""
    return json.dumps([{"title": a.title, "reason": a.reason} for a in alternatives])
