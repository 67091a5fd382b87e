"""Where a legacy context graph keeps each mapped fact: labels, relationship types and property names.

The default describes the graph :mod:`fleet_actors.adapters.neo4j.graph_mapping` writes, so a graph
written by our own projection reads back unchanged. A JSON file overrides any part of it::

    {
      "story":    {"label": "Case", "id": "case_id", "created_by": null},
      "subtask":  {"label": "Task", "relationship": "HAS_TASK", "status": "state"},
      "status_aliases": {"TODO": "PENDING", "WIP": "IN_PROGRESS"}
    }

Sections and keys left out keep their defaults; ``null`` marks an optional property or relationship
the legacy graph does not have. Labels, relationship types and property names end up in Cypher text
(Cypher has no parameters for them), so each must be a plain identifier; values always travel as
parameters.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fleet_actors.domain.state import Phase, SubtaskStatus
from fleet_actors.errors import ConfigurationError

#: what may appear in Cypher text unquoted; anything else is refused, never escaped
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_identifier(value: object, where: str) -> str:
    """``value`` if it is a plain identifier; ConfigurationError naming ``where`` otherwise."""
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{where} must be an identifier matching ^[A-Za-z_][A-Za-z0-9_]*$, got {value!r:.80}", field=where
        )
    return value


@dataclass(frozen=True)
class _Section:
    """A node kind: every field is an identifier; ``str | None`` fields may be switched off with None."""

    def __post_init__(self) -> None:
        section = _SECTION_NAMES[type(self)]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and "None" in str(f.type):
                continue
            check_identifier(value, f"{section}.{f.name}")


@dataclass(frozen=True)
class StoryMapping(_Section):
    label: str = "Story"
    id: str = "story_id"
    title: str = "title"
    description: str | None = "description"
    phase: str | None = "phase"
    created_at: str | None = "created_at"
    created_by: str | None = "created_by"
    #: the last change of the story; ``--since`` selects on it (falling back to created_at)
    updated_at: str | None = "updated_at"


@dataclass(frozen=True)
class SubtaskMapping(_Section):
    label: str = "Subtask"
    #: story -> subtask
    relationship: str = "HAS_SUBTASK"
    #: subtask -> the subtask it depends on
    depends_on: str | None = "DEPENDS_ON"
    id: str = "subtask_id"
    title: str = "title"
    description: str | None = "description"
    role: str = "role"
    status: str | None = "status"
    priority: str | None = "priority"
    estimated_hours: str | None = "estimated_hours"
    created_at: str | None = "created_at"
    #: when the status last changed
    updated_at: str | None = "updated_at"


@dataclass(frozen=True)
class DecisionMapping(_Section):
    label: str = "Decision"
    #: story -> decision
    relationship: str = "HAS_DECISION"
    #: decision -> decision relations, one relationship type per domain relation type
    depends_on: str | None = "DEPENDS_ON"
    supersedes: str | None = "SUPERSEDES"
    #: decision -> subtask
    impacts: str | None = "IMPACTS"
    id: str = "decision_id"
    title: str = "title"
    rationale: str = "rationale"
    type: str | None = "decision_type"
    alternatives: str | None = "alternatives"
    decided_by: str | None = "decided_by"
    decided_at: str | None = "decided_at"
    #: a JSON object (as the projection writes it) or a map of strings
    metadata: str | None = "metadata"


@dataclass(frozen=True)
class MilestoneMapping(_Section):
    label: str = "Milestone"
    #: story -> milestone
    relationship: str = "HAS_MILESTONE"
    #: milestones are not referenced by anything, so one without an id gets a content-derived id
    id: str | None = "milestone_id"
    kind: str = "kind"
    description: str | None = "description"
    at: str | None = "at"
    actor: str | None = "actor"


_SECTION_NAMES: dict[type[_Section], str] = {
    StoryMapping: "story",
    SubtaskMapping: "subtask",
    DecisionMapping: "decision",
    MilestoneMapping: "milestone",
}


def _frozen(values: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class LegacyMapping:
    """The whole legacy graph shape. ``LegacyMapping()`` is the graph our projection writes."""

    story: StoryMapping = StoryMapping()
    subtask: SubtaskMapping = SubtaskMapping()
    decision: DecisionMapping = DecisionMapping()
    milestone: MilestoneMapping = MilestoneMapping()
    #: legacy subtask status (any case) -> domain status, for graphs with their own vocabulary
    status_aliases: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    #: legacy story phase (any case) -> domain phase
    phase_aliases: Mapping[str, str] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        labels = [self.story.label, self.subtask.label, self.decision.label, self.milestone.label]
        if len(set(labels)) != len(labels):
            # One label for two kinds would make e.g. every subtask look like a story.
            raise ConfigurationError(f"the four node labels must differ, got {labels}", field="label")
        relations = (self.decision.depends_on, self.decision.supersedes)
        if relations[0] is not None and relations[0] == relations[1]:
            raise ConfigurationError(
                f"decision.depends_on and decision.supersedes must differ, both are {relations[0]!r}",
                field="decision.supersedes",
            )
        object.__setattr__(self, "status_aliases", _aliases(self.status_aliases, SubtaskStatus, "status_aliases"))
        object.__setattr__(self, "phase_aliases", _aliases(self.phase_aliases, Phase, "phase_aliases"))

    def subtask_status(self, raw: str) -> str:
        """The domain status a legacy status stands for (upper-cased, aliases applied); may be unknown."""
        text = raw.strip().upper()
        return self.status_aliases.get(text, text)

    def phase(self, raw: str) -> str:
        """The domain phase a legacy phase stands for (upper-cased, aliases applied); may be unknown."""
        text = raw.strip().upper()
        return self.phase_aliases.get(text, text)

    def to_json(self) -> dict[str, Any]:
        """The mapping as a JSON-ready dict (the file format :func:`load_mapping` reads)."""
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTION_NAMES.values()}
        out["status_aliases"] = dict(self.status_aliases)
        out["phase_aliases"] = dict(self.phase_aliases)
        return out


def _aliases(values: object, domain: type[SubtaskStatus] | type[Phase], where: str) -> Mapping[str, str]:
    if not isinstance(values, Mapping):
        raise ConfigurationError(f"{where} must be an object of legacy value -> domain value", field=where)
    allowed = [member.value for member in domain]
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigurationError(f"{where} keys must be non-empty strings, got {key!r:.80}", field=where)
        if not isinstance(value, str) or value.strip().upper() not in allowed:
            raise ConfigurationError(
                f"{where}[{key!r}] must be one of {', '.join(allowed)}, got {value!r:.80}", field=where
            )
        out[key.strip().upper()] = value.strip().upper()
    return _frozen(out)


DEFAULT_MAPPING = LegacyMapping()


def mapping_from_json(document: object) -> LegacyMapping:
    """Build a mapping from a parsed JSON document, filling what it leaves out from the defaults."""
    if not isinstance(document, Mapping):
        raise ConfigurationError("a mapping must be a JSON object")
    sections = {name: cls for cls, name in _SECTION_NAMES.items()}
    known = [*sections, "status_aliases", "phase_aliases"]
    unknown = sorted(set(document) - set(known))
    if unknown:
        raise ConfigurationError(f"unknown keys {unknown}; a mapping has {', '.join(known)}")
    values: dict[str, Any] = {}
    for name, cls in sections.items():
        given = document.get(name, {})
        if not isinstance(given, Mapping):
            raise ConfigurationError(f"{name} must be an object, got {type(given).__name__}", field=name)
        fields = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(set(given) - set(fields))
        if extra:
            raise ConfigurationError(f"{name} has unknown keys {extra}; it has {', '.join(fields)}", field=name)
        values[name] = cls(**given)
    for name in ("status_aliases", "phase_aliases"):
        if name in document:
            values[name] = document[name]
    return LegacyMapping(**values)


def load_mapping(path: str | Path | None) -> LegacyMapping:
    """The mapping in the JSON file at ``path``; the default when ``path`` is None."""
    if path is None:
        return DEFAULT_MAPPING
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"cannot read mapping file {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"mapping file {path} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    try:
        return mapping_from_json(document)
    except ConfigurationError as error:
        raise ConfigurationError(f"mapping file {path}: {error.message}", field=error.field) from None
