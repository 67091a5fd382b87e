"""The policy file (``fleet_actors/config/scope_policy.json`` unless settings name another): reading it,
and the part that story actors need, the story's phases (:class:`~fleet_actors.domain.phases.PhaseRules`).

The gateway reads the whole file (``gateway/scope_policy.py``); story actors read only
``story_phases`` and hand it to the pure domain in ``DecideContext``. Both read the same file, so a
phase the gateway accepts is one the story accepts.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from fleet_actors.domain.phases import DEFAULT_PHASE_RULES, PhaseRules
from fleet_actors.errors import ConfigurationError

#: environment variable naming a policy file to use instead of the packaged one (= Settings.scope_policy_file)
POLICY_FILE_ENV = "FLEET_SCOPE_POLICY_FILE"


def read_policy_document(path: str | os.PathLike[str] | None = None) -> tuple[Any, str]:
    """The parsed file at ``path``, else ``$FLEET_SCOPE_POLICY_FILE``, else the packaged one; and its name.

    Raises:
        ConfigurationError: the file cannot be read or is not JSON.
    """
    chosen = path if path else os.environ.get(POLICY_FILE_ENV) or None
    if chosen is None:
        source = "the packaged scope_policy.json"
        text = (resources.files("fleet_actors") / "config" / "scope_policy.json").read_text(encoding="utf-8")
    else:
        source = str(Path(chosen))
        try:
            text = Path(chosen).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"scope policy {source} cannot be read: {error.strerror}") from None
    try:
        return json.loads(text), source
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"scope policy {source} is not valid JSON: {error}") from None


def phase_rules_from(document: Any, source: str = "<mapping>") -> PhaseRules:
    """``story_phases`` of a parsed policy document: ``order``, ``optional`` and ``aliases``.

    A document without ``story_phases`` gets the domain's default (DESIGN, BUILD, TEST, DOCS).

    Raises:
        ConfigurationError: naming ``source`` and the problem.
    """
    section = document.get("story_phases") if isinstance(document, dict) else None
    if section is None:
        return DEFAULT_PHASE_RULES
    if not isinstance(section, dict):
        raise ConfigurationError(f"scope policy {source}: story_phases must be an object")
    order, optional, aliases = section.get("order"), section.get("optional", []), section.get("aliases", {})
    if not isinstance(order, list) or not all(isinstance(p, str) for p in order):
        raise ConfigurationError(f"scope policy {source}: story_phases.order must be a list of phase names")
    if not isinstance(optional, list) or not all(isinstance(p, str) for p in optional):
        raise ConfigurationError(f"scope policy {source}: story_phases.optional must be a list of phase names")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigurationError(f"scope policy {source}: story_phases.aliases must map names to phases")
    try:
        return PhaseRules(tuple(order), frozenset(optional), aliases)
    except ValueError as error:
        raise ConfigurationError(f"scope policy {source}: story_phases: {error}") from None


def load_phase_rules(path: str | os.PathLike[str] | None = None) -> PhaseRules:
    """The story phases of the policy file (see :func:`read_policy_document` for which file)."""
    return phase_rules_from(*read_policy_document(path))


@functools.lru_cache(maxsize=8)
def phase_rules(path: str = "") -> PhaseRules:
    """:func:`load_phase_rules`, read once per file: the client checks phase names before every command."""
    return load_phase_rules(path or None)
