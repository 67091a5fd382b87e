"""The scope policy: which prompt sections a role gets in a phase, read from an editable JSON file.

The file (``fleet_actors/config/scope_policy.json`` unless ``FLEET_SCOPE_POLICY_FILE`` names
another) maps the roles and phases agents send to the columns and rows of a policy table, lists
every section by importance (for trimming to a token budget), and gives each row x column its
sections in prompt order. Inputs are case-insensitive. A malformed file is a
:class:`~fleet_actors.errors.ConfigurationError` naming the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from fleet_actors.domain import rules
from fleet_actors.domain.phases import DEFAULT_PHASE_RULES, PhaseRules
from fleet_actors.errors import ConfigurationError, InvalidCommand, RuleViolation
from fleet_actors.policy_file import POLICY_FILE_ENV, phase_rules_from, read_policy_document

_Fail = Callable[[str], ConfigurationError]

__all__ = ["POLICY_FILE_ENV", "RoleScope", "ScopeCheck", "ScopePolicy", "Section"]


class Section(StrEnum):
    """Every prompt section the context assembly knows how to render."""

    CASE_HEADER = "CASE_HEADER"
    PLAN_HEADER = "PLAN_HEADER"
    DECISIONS_GLOBAL = "DECISIONS_GLOBAL"
    DECISIONS_GLOBAL_MIN = "DECISIONS_GLOBAL_MIN"
    DECISIONS_RELEVANT_ROLE = "DECISIONS_RELEVANT_ROLE"
    DEPS_DECISIONS = "DEPS_DECISIONS"
    DEPS_RELEVANT = "DEPS_RELEVANT"
    SUBTASKS_ALL = "SUBTASKS_ALL"
    SUBTASKS_ALL_MIN = "SUBTASKS_ALL_MIN"
    SUBTASKS_ROLE = "SUBTASKS_ROLE"
    SUBTASKS_ROLE_MIN = "SUBTASKS_ROLE_MIN"
    MILESTONES = "MILESTONES"
    SUMMARY_LAST = "SUMMARY_LAST"


@dataclass(frozen=True)
class RoleScope:
    """What one role sees in one phase."""

    #: the role as agents name it, upper case (e.g. ``DEV``)
    role: str
    #: the phase as agents name it, upper case (e.g. ``DOCS``)
    phase: str
    #: the sections, in prompt order
    sections: tuple[Section, ...]
    #: subtask role labels that count as this role's own work (every role sharing its column)
    subtask_roles: frozenset[str]
    #: every section, most important first
    importance: tuple[Section, ...]


@dataclass(frozen=True)
class ScopeCheck:
    """The answer to ValidateScope."""

    allowed: bool
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    reason: str


class ScopePolicy:
    """A validated policy table. Build with :meth:`load` or :meth:`from_mapping`."""

    def __init__(
        self,
        roles: Mapping[str, str],
        phases: Mapping[str, str],
        importance: tuple[Section, ...],
        rows: Mapping[str, Mapping[str, tuple[Section, ...]]],
        source: str,
        minimum: tuple[Section, ...] = (Section.CASE_HEADER, Section.PLAN_HEADER),
        story_phases: PhaseRules = DEFAULT_PHASE_RULES,
    ) -> None:
        self.minimum = minimum
        self.story_phases = story_phases
        self.roles = MappingProxyType(dict(roles))
        self.phases = MappingProxyType(dict(phases))
        self.importance = importance
        self.rows = MappingProxyType({row: MappingProxyType(dict(columns)) for row, columns in rows.items()})
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ScopePolicy:
        """Read the policy from ``path``, else ``$FLEET_SCOPE_POLICY_FILE``, else the packaged file
        (``path`` is usually ``Settings.scope_policy_file``; empty means the same as None).

        Raises:
            ConfigurationError: the file is missing, not JSON, or not a valid policy.
        """
        return cls.from_mapping(*read_policy_document(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<mapping>") -> ScopePolicy:
        """Validate a parsed policy document.

        Raises:
            ConfigurationError: naming ``source`` and the first problem found.
        """

        def fail(problem: str) -> ConfigurationError:
            return ConfigurationError(f"scope policy {source}: {problem}")

        if not isinstance(data, Mapping):
            raise fail("the document must be a JSON object")
        roles = _upper_keys(data.get("roles"), "roles", fail)
        phases = _upper_keys(data.get("phases"), "phases", fail)
        importance = _sections(data.get("importance"), "importance", fail)
        if sorted(importance) != sorted(Section):
            missing = sorted(set(Section) - set(importance))
            raise fail(f"importance must list every section exactly once (missing: {', '.join(missing) or 'none'})")
        raw_rows = data.get("policy")
        if not isinstance(raw_rows, Mapping) or not raw_rows:
            raise fail("policy must be an object of rows")
        rows: dict[str, dict[str, tuple[Section, ...]]] = {}
        for row, columns in raw_rows.items():
            if not isinstance(columns, Mapping):
                raise fail(f"policy.{row} must be an object of columns")
            rows[row] = {
                column: _sections(listed, f"policy.{row}.{column}", fail) for column, listed in columns.items()
            }
        for phase, row in phases.items():
            if row not in rows:
                raise fail(f"phase {phase} points at row {row!r}, which policy does not have")
        columns = {column for row in rows.values() for column in row}
        for role, column in roles.items():
            if column not in columns:
                raise fail(f"role {role} points at column {column!r}, which no row of policy has")
        minimum = _sections(data.get("minimum", ["CASE_HEADER", "PLAN_HEADER"]), "minimum", fail)
        return cls(roles, phases, importance, rows, source, minimum, phase_rules_from(data, source))

    @property
    def agent_roles(self) -> tuple[str, ...]:
        """The roles agents may send, in file order."""
        return tuple(self.roles)

    def role(self, value: str, field: str = "role") -> str:
        """The role upper-cased; raises InvalidCommand naming ``field`` if the policy does not know it."""
        return _lookup(value, self.roles, field)

    def phase(self, value: str, field: str = "phase") -> str:
        """The phase upper-cased; raises InvalidCommand naming ``field`` if the policy does not know it."""
        return _lookup(value, self.phases, field)

    def scope(self, role: str, phase: str) -> RoleScope:
        """The sections ``role`` gets in ``phase`` (both case-insensitive).

        Raises:
            InvalidCommand: an unknown role or phase (field ``role``/``phase``).
            RuleViolation: the policy has no entry for this role in this phase.
        """
        role, phase = self.role(role), self.phase(phase)
        column = self.roles[role]
        sections = self.rows[self.phases[phase]].get(column)
        if sections is None:
            raise RuleViolation(f"the scope policy gives role {role} nothing in phase {phase}", field="role")
        own = frozenset(r for r, c in self.roles.items() if c == column) | {column.upper()}
        return RoleScope(role, phase, sections, own, self.importance)

    def resolve(self, role: str, phase: str, *, role_field: str = "role") -> tuple[RoleScope, tuple[str, ...]]:
        """The sections ``role`` gets in ``phase``, never refusing a name it does not know.

        A role or phase the policy does not know (or a pair it has no entry for) gets the
        role-independent minimum (``minimum`` in the file: CASE_HEADER, PLAN_HEADER), never another
        role's sections, and a warning saying so. Phases may also be named by their story-phase
        aliases (DOC for DOCS).

        Raises:
            InvalidCommand: an empty or oversized role, or an oversized phase (naming ``role_field``/``phase``).
        """
        role_key = rules.check_text(role, role_field, rules.MAX_SHORT, required=True).strip().upper()
        phase_key = rules.check_text(phase, "phase", rules.MAX_SHORT).strip().upper()
        if phase_key not in self.phases and phase_key in self.story_phases.aliases:
            phase_key = self.story_phases.aliases[phase_key]
        warnings = []
        if role_key not in self.roles:
            warnings.append(f"{role_field} {role!r} is not in the scope policy (known: {', '.join(self.roles)})")
        if phase_key not in self.phases:
            warnings.append(f"phase {phase!r} is not in the scope policy (known: {', '.join(self.phases)})")
        if not warnings:
            column = self.roles[role_key]
            sections = self.rows[self.phases[phase_key]].get(column)
            if sections is not None:
                own = frozenset(r for r, c in self.roles.items() if c == column) | {column.upper()}
                return RoleScope(role_key, phase_key, sections, own, self.importance), ()
            warnings.append(f"the scope policy gives role {role_key} nothing in phase {phase_key}")
        minimum = ", ".join(s.value for s in self.minimum)
        warnings.append(f"answered with the role-independent minimum: {minimum}")
        own = frozenset({role_key, self.roles.get(role_key, role_key).upper()})
        return RoleScope(role_key, phase_key, self.minimum, own, self.importance), tuple(warnings)

    def validate(self, role: str, phase: str, provided: Iterable[str]) -> ScopeCheck:
        """Compare the scopes an agent uses with the policy's: allowed only if none is missing or extra.

        An unknown role or phase is compared with the role-independent minimum; the reason says so."""
        scope, warnings = self.resolve(role, phase)
        expected = scope.sections
        given = {scope.strip().upper() for scope in provided if scope.strip()}
        missing = tuple(s.value for s in expected if s not in given)
        extra = tuple(sorted(given - set(expected)))
        reasons = []
        if missing:
            reasons.append(f"missing required scopes: {', '.join(missing)}")
        if extra:
            reasons.append(f"scopes not allowed for {role.upper()} in {phase.upper()}: {', '.join(extra)}")
        reason = "; ".join([*warnings, *reasons]) or f"scopes match the policy for {role.upper()} in {phase.upper()}"
        return ScopeCheck(not missing and not extra, missing, extra, reason)


def _lookup(value: str, table: Mapping[str, str], field: str) -> str:
    key = value.strip().upper() if isinstance(value, str) else ""
    if key not in table:
        known = ", ".join(table)
        raise InvalidCommand(f"{field} must be one of {known} (any letter case), got {value!r:.80}", field=field)
    return key


def _upper_keys(value: Any, name: str, fail: _Fail) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise fail(f"{name} must be a non-empty object of name -> policy key")
    out = {}
    for key, target in value.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(target, str) or not target:
            raise fail(f"{name} maps {key!r} to {target!r}; both must be non-empty strings")
        out[key.strip().upper()] = target
    return out


def _sections(value: Any, name: str, fail: _Fail) -> tuple[Section, ...]:
    if not isinstance(value, list):
        raise fail(f"{name} must be a list of sections")
    sections = []
    for item in value:
        try:
            sections.append(Section(str(item).strip().upper()))
        except ValueError:
            raise fail(f"{name} lists unknown section {item!r}; known: {', '.join(Section)}") from None
    if len(set(sections)) != len(sections):
        raise fail(f"{name} lists a section twice")
    return tuple(sections)
