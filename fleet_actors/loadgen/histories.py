"""Realistic story histories, valid by construction: every command passes through ``decide``.

The mix (per story, after creation): about 70 % subtask status updates, 10 % new subtasks,
6 % decisions with rationale text, 3 % decision relations, 3 % impacts, 3 % milestones,
3 % summaries and 2 % phase transitions (forward; occasionally back with a rationale).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from fleet_actors.domain.commands import (
    AddDecision,
    Command,
    CreateStory,
    CreateSubtask,
    RecordImpact,
    RecordMilestone,
    RecordSummary,
    RelateDecisions,
    TransitionPhase,
    UpdateSubtask,
)
from fleet_actors.domain.events import Alternative, EventEnvelope
from fleet_actors.domain.state import PHASE_ORDER, SUBTASK_TRANSITIONS, StoryState, SubtaskStatus
from fleet_actors.domain.story import Accepted, DecideContext, decide, evolve

_TOPICS = ["checkout", "search", "onboarding", "billing", "audit log", "notifications", "rate limiting", "SSO"]
_SUBTASKS = ["API contract", "data model", "migration", "UI form", "integration tests", "load test", "docs page",
             "feature flag", "metrics", "error handling", "retry policy", "caching"]  # fmt: skip
_DECISIONS = [
    ("Use PostgreSQL row-level locks", "Contention is low and it keeps the invariant in one place."),
    ("Keep the endpoint synchronous", "p99 stays under 200 ms; a queue would add operational cost."),
    ("Cache lookups in Valkey for 60 s", "Reads outnumber writes 50:1 and staleness of a minute is fine."),
    ("Ship behind a feature flag", "Lets us roll out to 5 % of tenants and roll back without a deploy."),
    ("Version the payload schema", "Older agents must keep working while new fields roll out."),
    ("Reject oversized uploads at the edge", "Saves backend memory; the limit is documented in the API."),
]
_ROLES = ["DEV", "QA", "ARCHITECT", "DEVOPS", "DATA"]
_MILESTONES = ["DESIGN_APPROVED", "CODE_COMPLETE", "QA_SIGNOFF", "DEPLOYED_STAGING", "DEMOED"]


def story_history(
    story_id: str, events: int, *, seed: int = 0, start: datetime, actor: str = "seed"
) -> list[EventEnvelope]:
    """``events`` envelopes (exactly) for a new story, stamped a few seconds apart from ``start``."""
    rng = random.Random(f"{seed}:{story_id}")
    proposer = _Proposer(rng)
    state = StoryState(story_id)
    out: list[EventEnvelope] = []
    now = start
    serial = 0
    while len(out) < events:
        serial += 1
        decision = decide(state, proposer.propose(state), DecideContext((f"g{serial}",)))
        if not isinstance(decision, Accepted):
            continue  # the generator proposes; the rules dispose
        for event in decision.events:
            now += timedelta(seconds=rng.randint(1, 30))
            envelope = EventEnvelope(f"{story_id}.{serial}", story_id, state.version + 1, now, event, "", actor)
            state = evolve(state, envelope)
            out.append(envelope)
    return out


class _Proposer:
    """Proposes a plausible next command for a story in a given state."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._count = 0

    def propose(self, state: StoryState) -> Command:
        rng = self._rng
        self._count += 1
        n = self._count
        if not state.created:
            topic = rng.choice(_TOPICS)
            return CreateStory(f"Improve {topic}", f"Customers asked for a better {topic} experience.")
        subtasks, decisions = list(state.subtasks), list(state.decisions)
        roll = rng.random()
        if not subtasks or roll < 0.10:
            deps = tuple(rng.sample(subtasks, k=min(len(subtasks), rng.randint(0, 2))))
            return CreateSubtask(f"T{n}", rng.choice(_SUBTASKS).capitalize(), rng.choice(_ROLES), dependencies=deps,
                                 priority=rng.randint(1, 5), estimated_hours=rng.randint(1, 16))  # fmt: skip
        if roll < 0.16:
            title, rationale = rng.choice(_DECISIONS)
            return AddDecision(title, rationale, rng.choice(["ARCHITECTURE", "IMPLEMENTATION", "TESTING"]), f"D{n}",
                               alternatives=(Alternative("Do nothing", "the problem grows with traffic"),))  # fmt: skip
        if roll < 0.19 and len(decisions) >= 2:
            src, dst = rng.sample(decisions, 2)
            return RelateDecisions(src, dst, rng.choice(["DEPENDS_ON", "SUPERSEDES"]))
        if roll < 0.22 and decisions:
            return RecordImpact(rng.choice(decisions), rng.choice(subtasks))
        if roll < 0.25:
            return RecordMilestone(rng.choice(_MILESTONES), "reached on schedule", f"M{n}")
        if roll < 0.28:
            return RecordSummary(f"Progress on {len(subtasks)} subtasks; {len(decisions)} decisions so far.")
        if roll < 0.30:
            index = PHASE_ORDER.index(state.phase)
            if index + 1 < len(PHASE_ORDER) and rng.random() < 0.8:
                return TransitionPhase(PHASE_ORDER[index + 1].value)
            if index > 0:
                return TransitionPhase(PHASE_ORDER[index - 1].value, "review found a gap")
        movable = [s for s in state.subtasks.values() if SUBTASK_TRANSITIONS[SubtaskStatus(s.status)]]
        if not movable:
            return CreateSubtask(f"T{n}", rng.choice(_SUBTASKS).capitalize(), rng.choice(_ROLES))
        subtask = rng.choice(movable)
        choices = sorted(SUBTASK_TRANSITIONS[SubtaskStatus(subtask.status)] - {SubtaskStatus.CANCELLED})
        # Mostly keep work moving back and forth; finish a subtask now and then.
        weights = [0.2 if c == SubtaskStatus.DONE else 1.0 for c in choices]
        return UpdateSubtask(subtask.subtask_id, rng.choices(choices, weights)[0].value)
