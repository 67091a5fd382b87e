"""Compare the legacy graph with the event-sourced state, story by story, for the mapped properties.

Compared per story: title, phase, subtask ids with their statuses and dependencies, decision ids,
decision relations, impacts and the number of milestones. Legacy nodes the reader could not map
are reported as problems; they count as differences, because the event log cannot hold them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fleet_actors.domain.state import StoryState
from fleet_actors.domain.story import fold
from fleet_actors.migration.legacy_reader import DEFAULT_PAGE_SIZE, LegacyReader, LegacyStory, Problem
from fleet_actors.ports.event_store import EventStore

View = dict[str, Counter[tuple[object, ...]]]


def legacy_view(story: LegacyStory) -> View:
    """The compared facts of a legacy story (multisets, so a duplicate counts)."""
    return {
        "title": Counter([(story.title,)]),
        "phase": Counter([(story.phase,)]),
        "subtasks": Counter((s.subtask_id, s.status) for s in story.subtasks),
        "subtask dependencies": Counter((s.subtask_id, d) for s in story.subtasks for d in s.dependencies),
        "decisions": Counter((d.decision_id,) for d in story.decisions),
        "decision relations": Counter((r.src_id, r.relation_type, r.dst_id) for r in story.relations),
        "impacts": Counter((i.decision_id, i.subtask_id) for i in story.impacts),
        "milestone count": Counter([(len(story.milestones),)]),
    }


def state_view(state: StoryState) -> View:
    """The same facts of a story folded from the event log."""
    return {
        "title": Counter([(state.title,)]),
        "phase": Counter([(state.phase,)]),
        "subtasks": Counter((s.subtask_id, s.status) for s in state.subtasks.values()),
        "subtask dependencies": Counter((s.subtask_id, d) for s in state.subtasks.values() for d in s.dependencies),
        "decisions": Counter((d,) for d in state.decisions),
        "decision relations": Counter((r.src_id, r.relation_type, r.dst_id) for r in state.relations),
        "impacts": Counter((i.decision_id, i.subtask_id) for i in state.impacts),
        "milestone count": Counter([(len(state.milestones),)]),
    }


def _shown(items: Counter[tuple[object, ...]]) -> str:
    return ", ".join("/".join(str(part) for part in item) for item in sorted(items.elements(), key=repr))


def compare_story(legacy: LegacyStory, state: StoryState) -> list[str]:
    """How the event-sourced story differs from the legacy one ([] when they agree)."""
    if not state.created:
        return ["not in the event log"]
    want, have = legacy_view(legacy), state_view(state)
    out = []
    for name in want:
        only_legacy, only_log = want[name] - have[name], have[name] - want[name]
        if only_legacy or only_log:
            out.append(f"{name}: legacy graph [{_shown(only_legacy)}] event log [{_shown(only_log)}]")
    return out


@dataclass
class CompareReport:
    stories: int = 0
    #: "story: difference" lines
    differences: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and not self.problems


async def compare_legacy(
    reader: LegacyReader,
    store: EventStore | None,
    *,
    story_prefix: str = "",
    since: datetime | None = None,
    log_story_ids: Sequence[str] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> CompareReport:
    """Compare every selected legacy story with its folded event history.

    ``log_story_ids`` (the stories in the log, already limited to ``story_prefix``) adds a
    difference for each story the log has and the legacy graph lacks; it is ignored with ``since``,
    which selects on legacy times only. ``store`` None means there is no log yet.
    """
    listing = await reader.list_stories(story_prefix=story_prefix, since=since)
    report = CompareReport(problems=list(listing.problems))
    async for page in reader.pages(listing.story_ids, page_size):
        for story in page:
            report.stories += 1
            report.problems.extend(story.problems)
            events = [] if store is None else [s.envelope async for s in store.read(story.story_id)]
            state = fold(StoryState(story.story_id), events)
            report.differences.extend(f"{story.story_id}: {d}" for d in compare_story(story, state))
    if log_story_ids is not None and since is None:
        unreadable = {p.story_id for p in listing.problems}
        for story_id in sorted(set(log_story_ids) - set(listing.story_ids) - unreadable):
            report.differences.append(f"{story_id}: only in the event log")
    return report
