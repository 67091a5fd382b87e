"""A story's phases as configuration: which exist, in what order, under which other names.

The domain does not read the configuration: the shell builds :class:`PhaseRules` (from the scope
policy file, ``fleet_actors/policy_file.py``) and hands it to ``decide`` in ``DecideContext``.
:data:`DEFAULT_PHASE_RULES` is the domain's own default: DESIGN -> BUILD -> TEST -> DOCS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fleet_actors.errors import InvalidCommand, RuleViolation


@dataclass(frozen=True)
class PhaseRules:
    """The phases a story may be in, in order.

    A story moves forward one phase at a time, except over ``optional`` phases, which a forward
    move may pass; a move back (to an earlier phase) needs a rationale. ``aliases`` maps other names
    callers use (e.g. DOC) to a phase of ``order`` (DOCS), which is what events record.
    """

    order: tuple[str, ...]
    optional: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = tuple(p.strip().upper() for p in self.order)
        if not order or any(not p for p in order) or len(set(order)) != len(order):
            raise ValueError(f"phase order must list distinct, non-empty phases, got {self.order!r}")
        optional = frozenset(p.strip().upper() for p in self.optional)
        if not optional <= set(order):
            raise ValueError(f"optional phases {sorted(optional - set(order))} are not in the order")
        aliases = {k.strip().upper(): v.strip().upper() for k, v in self.aliases.items()}
        if any(target not in order for target in aliases.values()):
            raise ValueError(f"phase aliases must point at phases of the order, got {dict(self.aliases)!r}")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "aliases", MappingProxyType(aliases))

    @property
    def initial(self) -> str:
        """Where a story starts when its creator names no phase: the first phase that is not optional."""
        return next((p for p in self.order if p not in self.optional), self.order[0])

    def canonical(self, value: object, field_name: str) -> str:
        """The phase ``value`` names (any letter case, an alias allowed); InvalidCommand otherwise."""
        key = value.strip().upper() if isinstance(value, str) else ""
        key = self.aliases.get(key, key)
        if key not in self.order:
            names = [*self.order, *(f"{alias} (= {target})" for alias, target in self.aliases.items())]
            raise InvalidCommand(f"{field_name} must be one of {', '.join(names)}, got {value!r:.80}", field=field_name)
        return key

    def check_move(self, current: str, target: str, rationale: str) -> None:
        """Raise RuleViolation unless a story in ``current`` may move to ``target`` (both canonical).

        A current phase the rules do not list (configuration changed since) may move anywhere.
        """
        if current == target:
            raise RuleViolation(f"story is already in phase {current}", field="to_phase")
        if current not in self.order:
            return
        here, there = self.order.index(current), self.order.index(target)
        if there < here:
            if not rationale.strip():
                raise RuleViolation(f"moving back from {current} to {target} needs a rationale", field="rationale")
            return
        skipped = [p for p in self.order[here + 1 : there] if p not in self.optional]
        if skipped:
            raise RuleViolation(
                f"phases advance one at a time: {current} -> {skipped[0]} (only optional phases may be passed over)",
                field="to_phase",
            )


DEFAULT_PHASE_RULES = PhaseRules(("DESIGN", "BUILD", "TEST", "DOCS"))
