"""Pure context assembly: a story's state and a role's scope -> prompt sections, packs and event views.

Nothing here does I/O, so the gateway's answers can be tested without servers and rebuilt for any
past state (GetContextAtTime) the same way as for the current one.

Token counts are estimates: :func:`estimate_tokens` takes one token per 4 characters (rounded
up), the usual rule of thumb for English text under BPE tokenizers. It is cheap and
model-independent; callers should leave some headroom in their budgets.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from fleet_actors.domain.events import (
    ContextCreated,
    DecisionAdded,
    DecisionImpacted,
    DecisionRelated,
    EventEnvelope,
    MilestoneRecorded,
    PhaseTransitioned,
    SubtaskCreated,
    SubtaskUpdated,
    SummaryRecorded,
)
from fleet_actors.domain.state import Decision, DecisionRelation, StoryState, Subtask, SubtaskStatus
from fleet_actors.errors import RuleViolation
from fleet_actors.gateway.scope_policy import RoleScope, Section
from fleet_actors.proto import context_service_pb2 as pb

CHARS_PER_TOKEN = 4
TRUNCATION_MARK = "\n[truncated to fit the token budget]"
_FINISHED = (SubtaskStatus.DONE, SubtaskStatus.CANCELLED)


def estimate_tokens(text: str) -> int:
    """Approximate tokens of ``text``: ceil(characters / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class AssembledContext:
    """A role's prompt for one story state."""

    system: str
    context: str
    tools: str
    #: the sections in ``context``, in order
    scopes: tuple[str, ...]
    #: the sections dropped to honour the token budget, least important first
    trimmed: tuple[str, ...]
    #: estimated tokens of ``context``
    token_count: int
    #: the story version the text reflects
    version: int


def assemble_context(
    state: StoryState, scope: RoleScope, *, subtask_id: str = "", token_budget: int = 0, tools: str = ""
) -> AssembledContext:
    """Render ``scope``'s sections for ``state``, dropping the least important ones to fit the budget.

    Args:
        state: the story (it must exist).
        scope: the role's sections in the requested phase, from the scope policy.
        subtask_id: optional focus: listed first among the role's subtasks, and the only subtask
            (with its dependencies) whose decisions count as relevant.
        token_budget: 0 for no limit. Otherwise sections are dropped in reverse order of
            ``scope.importance`` until the context fits; if the most important one alone is still
            too long, its text is cut (ending with :data:`TRUNCATION_MARK`).
        tools: the text of the tools block.

    Returns:
        The prompt blocks, the sections kept and dropped, and the context's token estimate.

    Raises:
        RuleViolation: ``subtask_id`` names no subtask of the story (field ``subtask_id``).
    """
    view = _RoleView(state, scope, subtask_id)
    rendered = {section: _RENDERERS[section](view) for section in scope.sections}
    kept = list(scope.sections)
    trimmed: list[str] = []
    text = _join(rendered, kept)
    if token_budget > 0:
        for section in reversed(scope.importance):
            if estimate_tokens(text) <= token_budget or len(kept) <= 1:
                break
            if section in kept:
                kept.remove(section)
                trimmed.append(section.value)
                text = _join(rendered, kept)
        if estimate_tokens(text) > token_budget:
            text = _truncate(text, token_budget * CHARS_PER_TOKEN)
    system = (
        f"You are the {scope.role} agent on story {state.story_id} ({state.title}), working in phase "
        f"{scope.phase}. The context below is the story as of version {state.version}: rely on it rather than "
        "on memory, and record your decisions, subtask progress, milestones and summaries with UpdateContext."
    )
    return AssembledContext(
        system=system,
        context=text,
        tools=tools,
        scopes=tuple(s.value for s in kept),
        trimmed=tuple(trimmed),
        token_count=estimate_tokens(text),
        version=state.version,
    )


def _join(rendered: dict[Section, str], sections: Iterable[Section]) -> str:
    return "\n\n".join(rendered[s] for s in sections)


def _truncate(text: str, limit: int) -> str:
    if limit > len(TRUNCATION_MARK):
        return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text[:limit]


# --- what a role sees -----------------------------------------------------------------------


class _RoleView:
    """The role's share of a story: its subtasks, the decisions relevant to them, their dependencies."""

    def __init__(self, state: StoryState, scope: RoleScope, subtask_id: str) -> None:
        self.state = state
        self.scope = scope
        focus = state.subtasks.get(subtask_id) if subtask_id else None
        if subtask_id and focus is None:
            raise RuleViolation(
                f"subtask {subtask_id!r} does not exist in story {state.story_id!r}", field="subtask_id"
            )
        self.focus = focus
        own = [s for s in _ordered_subtasks(state) if s.role.upper() in scope.subtask_roles]
        if focus is not None:
            own = [focus, *(s for s in own if s.subtask_id != focus.subtask_id)]
        self.own = own
        #: the subtasks whose decisions and dependencies matter to the role
        self.targets = {focus.subtask_id, *focus.dependencies} if focus else {s.subtask_id for s in own}
        relevant_ids = {i.decision_id for i in state.impacts if i.subtask_id in self.targets}
        self.relevant = [d for d in _ordered_decisions(state) if d.decision_id in relevant_ids]
        self.relevant_relations = [r for r in state.relations if r.src_id in relevant_ids or r.dst_id in relevant_ids]


def _ordered_subtasks(state: StoryState) -> list[Subtask]:
    return sorted(state.subtasks.values(), key=lambda s: (s.priority, s.created_at, s.subtask_id))


def _ordered_decisions(state: StoryState) -> list[Decision]:
    return sorted(state.decisions.values(), key=lambda d: (d.decided_at, d.decision_id))


def _iso(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at is not None else ""


def _section(title: str, lines: Sequence[str]) -> str:
    return "\n".join([f"## {title}", *(lines or ["(none)"])])


def _subtask_line(s: Subtask, view: _RoleView) -> str:
    mark = " (focus)" if view.focus is not None and s.subtask_id == view.focus.subtask_id else ""
    deps = f" | depends on {', '.join(s.dependencies)}" if s.dependencies else ""
    description = f"\n  {s.description}" if s.description else ""
    return f"- [{s.subtask_id}]{mark} {s.title} | {s.role} | {s.status} | P{s.priority}{deps}{description}"


def _subtask_min(s: Subtask, view: _RoleView) -> str:
    mark = " (focus)" if view.focus is not None and s.subtask_id == view.focus.subtask_id else ""
    return f"- [{s.subtask_id}]{mark} {s.title} | {s.status}"


def _decision_line(d: Decision) -> str:
    lines = [f"- [{d.decision_id}] {d.title} ({d.decision_type}, {d.status}) by {d.decided_by or 'unknown'}"]
    lines.append(f"  Rationale: {d.rationale}")
    for alternative in d.alternatives:
        reason = f": {alternative.reason}" if alternative.reason else ""
        lines.append(f"  Alternative considered: {alternative.title}{reason}")
    return "\n".join(lines)


def _relation_line(r: DecisionRelation) -> str:
    return f"- {r.src_id} {r.relation_type} {r.dst_id}"


def _case_header(view: _RoleView) -> str:
    s = view.state
    lines = [
        f"Story {s.story_id}: {s.title}",
        f"Phase {s.phase}, status {s.status}, version {s.version}",
        f"Created {_iso(s.created_at)} by {s.created_by or 'unknown'}",
    ]
    if s.description:
        lines.append(f"Description: {s.description}")
    return _section("Story", lines)


def _plan_header(view: _RoleView) -> str:
    s = view.state
    counts = Counter(subtask.status for subtask in s.subtasks.values())
    done = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())) or "no subtasks yet"
    lines = [f"Plan {plan_status(s)}: {len(s.subtasks)} subtasks ({done})"]
    if s.plan_id:
        lines.append(f"Plan {s.plan_id} version {s.plan_version}" + (f", {s.plan_status}" if s.plan_status else ""))
    return _section("Plan", lines)


def _decisions_global(view: _RoleView) -> str:
    return _section("Decisions", [_decision_line(d) for d in _ordered_decisions(view.state)])


def _decisions_global_min(view: _RoleView) -> str:
    lines = [f"- [{d.decision_id}] {d.title} ({d.status})" for d in _ordered_decisions(view.state)]
    return _section("Decisions (summary)", lines)


def _decisions_relevant(view: _RoleView) -> str:
    return _section("Decisions affecting your work", [_decision_line(d) for d in view.relevant])


def _deps_decisions(view: _RoleView) -> str:
    return _section("Decision dependencies", [_relation_line(r) for r in view.state.relations])


def _deps_relevant(view: _RoleView) -> str:
    subtasks = view.state.subtasks
    lines = []
    for target in sorted(view.targets):
        for dep in subtasks[target].dependencies if target in subtasks else ():
            other = subtasks.get(dep)
            status = f" ({other.title}, {other.status})" if other else ""
            lines.append(f"- {target} depends on {dep}{status}")
    lines += [_relation_line(r) for r in view.relevant_relations]
    return _section("Dependencies of your work", lines)


def _subtasks_all(view: _RoleView) -> str:
    return _section("Subtasks", [_subtask_line(s, view) for s in _ordered_subtasks(view.state)])


def _subtasks_all_min(view: _RoleView) -> str:
    return _section("Subtasks (summary)", [_subtask_min(s, view) for s in _ordered_subtasks(view.state)])


def _subtasks_role(view: _RoleView) -> str:
    return _section("Your subtasks", [_subtask_line(s, view) for s in view.own])


def _subtasks_role_min(view: _RoleView) -> str:
    return _section("Your subtasks (summary)", [_subtask_min(s, view) for s in view.own])


def _milestones(view: _RoleView) -> str:
    s = view.state
    # Phase changes are milestones of the story too; both are listed in the order they happened.
    entries = [(m.at, f"{m.kind}: {m.description}" if m.description else m.kind, m.actor) for m in s.milestones]
    entries += [(p.at, f"phase {p.from_phase} -> {p.to_phase}", p.actor) for p in s.phase_history]
    entries.sort(key=lambda e: e[0])
    return _section("Milestones", [f"- {_iso(at)} {what} (by {actor or 'unknown'})" for at, what, actor in entries])


def _summary_last(view: _RoleView) -> str:
    return _section("Last summary", [view.state.last_summary] if view.state.last_summary else [])


_RENDERERS: dict[Section, Callable[[_RoleView], str]] = {
    Section.CASE_HEADER: _case_header,
    Section.PLAN_HEADER: _plan_header,
    Section.DECISIONS_GLOBAL: _decisions_global,
    Section.DECISIONS_GLOBAL_MIN: _decisions_global_min,
    Section.DECISIONS_RELEVANT_ROLE: _decisions_relevant,
    Section.DEPS_DECISIONS: _deps_decisions,
    Section.DEPS_RELEVANT: _deps_relevant,
    Section.SUBTASKS_ALL: _subtasks_all,
    Section.SUBTASKS_ALL_MIN: _subtasks_all_min,
    Section.SUBTASKS_ROLE: _subtasks_role,
    Section.SUBTASKS_ROLE_MIN: _subtasks_role_min,
    Section.MILESTONES: _milestones,
    Section.SUMMARY_LAST: _summary_last,
}


def plan_status(state: StoryState) -> str:
    """EMPTY (no subtasks), PLANNED (none started), IN_PROGRESS, or DONE (all done or cancelled)."""
    statuses = [s.status for s in state.subtasks.values()]
    if not statuses:
        return "EMPTY"
    if all(status in _FINISHED for status in statuses):
        return "DONE"
    if all(status == SubtaskStatus.PENDING for status in statuses):
        return "PLANNED"
    return "IN_PROGRESS"


# --- RehydrateSession packs -----------------------------------------------------------------


def role_pack(
    state: StoryState,
    scope: RoleScope,
    *,
    include_summaries: bool,
    timeline: Sequence[EventEnvelope] | None = None,
) -> pb.RoleContextPack:
    """One role's pack, with the same selection as its GetContext sections.

    Subtasks: all if the scope has SUBTASKS_ALL(_MIN), else the role's own if it has
    SUBTASKS_ROLE(_MIN). Decisions: all with DECISIONS_GLOBAL(_MIN), else the relevant ones with
    DECISIONS_RELEVANT_ROLE. Decision relations: all with DEPS_DECISIONS, else those touching the
    relevant decisions with DEPS_RELEVANT. Impacts: those touching a packed decision or subtask.
    Milestones: the ``timeline`` events if given, else the recorded milestones with MILESTONES.
    ``token_budget_hint`` is the estimated size of the role's full GetContext context.
    """
    view = _RoleView(state, scope, "")
    sections = set(scope.sections)
    if sections & {Section.SUBTASKS_ALL, Section.SUBTASKS_ALL_MIN}:
        subtasks = _ordered_subtasks(state)
    elif sections & {Section.SUBTASKS_ROLE, Section.SUBTASKS_ROLE_MIN}:
        subtasks = view.own
    else:
        subtasks = []
    if sections & {Section.DECISIONS_GLOBAL, Section.DECISIONS_GLOBAL_MIN}:
        decisions = _ordered_decisions(state)
    elif Section.DECISIONS_RELEVANT_ROLE in sections:
        decisions = view.relevant
    else:
        decisions = []
    if Section.DEPS_DECISIONS in sections:
        relations = list(state.relations)
    elif Section.DEPS_RELEVANT in sections:
        relations = view.relevant_relations
    else:
        relations = []
    packed_subtasks = {s.subtask_id for s in subtasks}
    packed_decisions = {d.decision_id for d in decisions}
    if timeline is not None:
        milestones = timeline_milestones(timeline)
    elif Section.MILESTONES in sections:
        milestones = [
            pb.Milestone(event_type=m.kind, description=m.description, ts_ms=_ms(m.at), actor=m.actor)
            for m in state.milestones
        ]
    else:
        milestones = []
    return pb.RoleContextPack(
        role=scope.role,
        case_header=case_header(state),
        plan_header=plan_header(state),
        subtasks=[
            pb.Subtask(
                subtask_id=s.subtask_id,
                title=s.title,
                description=s.description,
                role=s.role,
                status=s.status,
                dependencies=s.dependencies,
                priority=s.priority,
            )
            for s in subtasks
        ],
        decisions=[
            pb.Decision(
                id=d.decision_id,
                title=d.title,
                rationale=d.rationale,
                status=d.status,
                decided_by=d.decided_by,
                decided_at=_iso(d.decided_at),
            )
            for d in decisions
        ],
        decision_deps=[
            pb.DecisionRelation(src_id=r.src_id, dst_id=r.dst_id, relation_type=r.relation_type) for r in relations
        ],
        impacted=[
            pb.ImpactedSubtask(
                decision_id=i.decision_id, subtask_id=i.subtask_id, title=state.subtasks[i.subtask_id].title
            )
            for i in state.impacts
            if i.subtask_id in packed_subtasks or i.decision_id in packed_decisions
        ],
        milestones=milestones,
        last_summary=state.last_summary if include_summaries else "",
        token_budget_hint=assemble_context(state, scope).token_count,
    )


def case_header(state: StoryState) -> pb.CaseHeader:
    """The story as a case: id, title, description, status and creation."""
    return pb.CaseHeader(
        case_id=state.story_id,
        title=state.title,
        description=state.description,
        status=state.status,
        created_at=_iso(state.created_at),
        created_by=state.created_by,
    )


def plan_header(state: StoryState) -> pb.PlanHeader:
    """The story's subtasks seen as its plan. Its id, version and status are the planning side's once it
    recorded a plan version (PlanVersioned); until then the story's id and version, and the subtasks' progress."""
    return pb.PlanHeader(
        plan_id=state.plan_id or state.story_id,
        version=state.plan_version if state.plan_id else state.version,
        status=(state.plan_status or plan_status(state)) if state.plan_id else plan_status(state),
        total_subtasks=len(state.subtasks),
        completed_subtasks=sum(1 for s in state.subtasks.values() if s.status == SubtaskStatus.DONE),
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


# --- events ---------------------------------------------------------------------------------


def story_event(envelope: EventEnvelope) -> pb.StoryEvent:
    """The wire form of a stored event (GetStoryHistory, WatchStory)."""
    message = pb.StoryEvent(
        version=envelope.version,
        event_type=envelope.event_type,
        actor=envelope.actor,
        command_id=envelope.command_id,
        event_id=envelope.event_id,
        payload_json=json.dumps(dataclasses.asdict(envelope.payload), sort_keys=True),
        story_id=envelope.story_id,
        redacted=envelope.redacted,
    )
    message.timestamp.FromDatetime(envelope.timestamp)
    return message


def describe_event(envelope: EventEnvelope) -> str:
    """A one-line account of an event, for timelines."""
    match envelope.payload:
        case ContextCreated(title=title, initial_phase=phase):
            return f"story created: {title} (phase {phase})"
        case PhaseTransitioned(from_phase=old, to_phase=new, rationale=why):
            return f"phase {old} -> {new}" + (f": {why}" if why else "")
        case SubtaskCreated(subtask_id=sid, title=title, role=role):
            return f"subtask {sid} created: {title} ({role})"
        case SubtaskUpdated(subtask_id=sid, status=status, note=note):
            return f"subtask {sid} -> {status}" + (f": {note}" if note else "")
        case DecisionAdded(decision_id=did, title=title):
            return f"decision {did} added: {title}"
        case DecisionRelated(src_id=src, dst_id=dst, relation_type=relation):
            return f"decision {src} {relation} {dst}"
        case DecisionImpacted(decision_id=did, subtask_id=sid):
            return f"decision {did} impacts subtask {sid}"
        case MilestoneRecorded(kind=kind, description=description):
            return f"milestone {kind}" + (f": {description}" if description else "")
        case SummaryRecorded(summary=summary):
            return f"summary recorded ({len(summary)} characters)"
        case _:
            return envelope.event_type


def timeline_milestones(envelopes: Iterable[EventEnvelope]) -> list[pb.Milestone]:
    """Events as timeline entries: their type, a one-line description, time and actor."""
    return [
        pb.Milestone(event_type=e.event_type, description=describe_event(e), ts_ms=_ms(e.timestamp), actor=e.actor)
        for e in envelopes
    ]
