"""Every upcaster, registered in the one registry (codec/upcasting.py). See docs/event-evolution.md.

An upcaster lifts the fields of a stored payload from schema vN to vN+1, before the domain event
is built; the domain only ever sees the current shape. Retire one only when `fleet-actors events
migrate --dry-run` reports no stored event of its version (and no archive needs it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import cast

from fleet_actors.codec.upcasting import Fields, upcaster
from fleet_actors.domain.alternatives import parse_alternatives

#: what early agents wrote as a subtask status, normalised (lower case, runs of ' -_' as '_')
V1_STATUS_WORDS = {
    "PENDING": {"pending", "todo", "to_do", "open", "new", "not_started", "backlog", "queued"},
    "IN_PROGRESS": {"in_progress", "inprogress", "wip", "started", "doing", "active", "working", "ongoing"},
    "BLOCKED": {"blocked", "on_hold", "stuck", "waiting", "paused"},
    "DONE": {"done", "complete", "completed", "finished", "closed", "resolved", "merged"},
    "CANCELLED": {"cancelled", "canceled", "dropped", "abandoned", "wontfix", "won_t_fix", "obsolete"},
}
_V1_STATUS = {word: status for status, words in V1_STATUS_WORDS.items() for word in words}


def v1_status(text: str) -> str:
    """The v2 status for a v1 status text, or "" if the text means nothing we can map."""
    return _V1_STATUS.get(re.sub(r"[\s\-_']+", "_", text.strip().lower()).strip("_"), "")


@upcaster("subtask_updated", from_version=1)
def upcast_subtask_updated_v1_v2(fields: Fields) -> Fields:
    """Free-form status text -> the status enum. Unmappable text is kept, visibly, in the note and
    the status is left as it was (evolve treats "" as "no change"): never guessed, never dropped."""
    raw = str(fields.pop("legacy_status", ""))
    status = v1_status(raw)
    note = str(fields.get("note", ""))
    if not status and raw.strip():
        note = f"[unrecognised v1 status {raw.strip()!r}] {note}".strip()
    return {**fields, "status": status, "note": note}


@upcaster("decision_added", from_version=1)
def upcast_decision_added_v1_v2(fields: Fields) -> Fields:
    """One free-text string of alternatives -> structured alternatives (one per line or ';')."""
    text = str(fields.pop("legacy_alternatives", ""))
    return {**fields, "alternatives": parse_alternatives(text)}


@upcaster("story_state", from_version=1)
def upcast_story_state_v1_v2(fields: Fields) -> Fields:
    """Snapshots and context documents of state schema 1 held decision alternatives as text.

    Works on the proto3 JSON mapping of the state: in a v1 JSON document the text is under
    ``alternatives``; decoded from v1 bytes with the v2 classes it is under ``legacy_alternatives``.
    """
    decisions = []
    # the proto3 JSON mapping: a list of decision objects
    for stored in cast("Iterable[Mapping[str, object]]", fields.get("decisions", [])):
        decision = dict(stored)
        legacy = decision.pop("legacy_alternatives", None)
        if isinstance(decision.get("alternatives"), str):
            legacy = decision.pop("alternatives")
        if legacy is not None:
            decision["alternatives"] = [{"title": a.title, "reason": a.reason} for a in parse_alternatives(str(legacy))]
        decisions.append(decision)
    return {**fields, "decisions": decisions, "schema_version": 2}
