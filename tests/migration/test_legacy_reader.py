"""Turning legacy rows into stories (pure): values, malformed nodes and dangling edges become problems."""

from __future__ import annotations

import datetime as dt

import neo4j.time
import pytest

from fleet_actors.domain.events import Alternative
from fleet_actors.migration.legacy_reader import (
    LegacyImpact,
    LegacyRelation,
    StoryRows,
    build_story,
    parse_time,
    select_stories,
)
from fleet_actors.migration.mapping import DEFAULT_MAPPING

UTC = dt.UTC


class Node(dict):
    """Stands in for a driver Node: properties plus an element id."""

    def __init__(self, element_id: str, **props: object) -> None:
        super().__init__(props)
        self.element_id = element_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("2025-03-01T10:00:00+00:00", dt.datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T10:00:00Z", dt.datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T12:00:00+02:00", dt.datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ("2025-03-01T10:00:00", dt.datetime(2025, 3, 1, 10, tzinfo=UTC)),
        (neo4j.time.DateTime(2025, 3, 1, 10, 0, 0), dt.datetime(2025, 3, 1, 10, tzinfo=UTC)),
        (neo4j.time.Date(2025, 3, 1), dt.datetime(2025, 3, 1, tzinfo=UTC)),
        (1_740_823_200_000, dt.datetime(2025, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_times_in_every_usual_shape(value, expected):
    assert parse_time(value) == expected


@pytest.mark.parametrize("value", ["yesterday", True, 1.5, ["2025-03-01"]])
def test_unreadable_times_raise(value):
    with pytest.raises(ValueError):
        parse_time(value)


def rows(id, eid, updated=None, created=None):
    return {"id": id, "eid": eid, "updated_at": updated, "created_at": created}


def test_story_listing_reports_unkeyable_nodes_and_applies_since():
    listing = select_stories(
        [
            rows("S2", "#1:1", "2025-05-01T00:00:00Z"),
            rows("S1", "#1:0", None, "2025-01-01T00:00:00Z"),  # older than since, by created_at
            rows(None, "#1:2"),
            rows(42, "#1:3"),
            rows("has space", "#1:4"),
            rows("DUP", "#1:5"),
            rows("DUP", "#1:6"),
            rows("S3", "#1:7"),  # no times at all: selected
            rows("S4", "#1:8", "not a time"),  # unreadable: selected (reported when the story is read)
        ],
        DEFAULT_MAPPING,
        since=dt.datetime(2025, 3, 1, tzinfo=UTC),
    )
    assert listing.story_ids == ["S2", "S3", "S4"]
    reasons = [(p.story_id, p.node, p.reason) for p in listing.problems]
    assert ("", "Story #1:2", "missing story_id; story skipped") in reasons
    assert any(node == "Story #1:3" and "42" in reason for _, node, reason in reasons)
    assert any(node == "Story #1:4" and "'has space'" in reason for _, node, reason in reasons)
    assert [r for r in reasons if r[0] == "DUP"] == [
        ("DUP", "Story #1:5", "2 Story nodes share this story_id; story skipped"),
        ("DUP", "Story #1:6", "2 Story nodes share this story_id; story skipped"),
    ]


def story_rows() -> StoryRows:
    t = "2025-02-01T09:00:00+00:00"
    return StoryRows(
        story=Node("#1:0", story_id="S1", title="Checkout", phase="build", created_at=t, created_by="ann"),
        subtasks=[
            Node("#2:0", subtask_id="T1", title="Form", role="DEV", status="done", priority="2"),
            Node("#2:1", subtask_id="T2", title="API", role="DEV", created_at="soon"),
            Node("#2:2", title="no id", role="DEV"),
            Node("#2:3", subtask_id="T 3", title="bad id", role="DEV"),
            Node("#2:4", subtask_id="T4", title="odd", role="DEV", status="WIP", priority=[1]),
            Node("#2:5", subtask_id="T1", title="twin", role="DEV"),
        ],
        dependencies=[
            {"src": "#2:1", "dst": "#2:0", "dst_id": "T1"},
            {"src": "#2:1", "dst": "#2:2", "dst_id": None},  # to the skipped node
            {"src": "#2:0", "dst": "#9:9", "dst_id": "T7"},  # to another story's subtask
            {"src": "#2:3", "dst": "#2:0", "dst_id": "T1"},  # from a skipped node: goes with it
        ],
        decisions=[
            Node("#3:0", decision_id="D1", title="Stripe", rationale="PCI", metadata='{"adr": "7"}'),
            Node(
                "#3:1",
                decision_id="D2",
                title="Adyen",
                rationale="fees",
                decision_type="technology",
                metadata="not json",
            ),
        ],
        relations={
            "SUPERSEDES": [{"src": "#3:1", "dst": "#3:0", "dst_id": "D1"}],
            "DEPENDS_ON": [{"src": "#3:0", "dst": "#2:0", "dst_id": None}],  # to a subtask: not a decision
        },
        impacts=[{"src": "#3:1", "dst": "#2:1", "dst_id": "T2"}, {"src": "#3:0", "dst": "#2:3", "dst_id": "T 3"}],
        milestones=[
            Node("#4:0", milestone_id="M1", kind="KICKOFF", at=t),
            Node("#4:1", kind="DEMO", description="no id"),
            Node("#4:2", kind="DEMO", description="no id"),
        ],
    )


def test_story_rows_become_a_story_and_its_problems():
    story = build_story("S1", story_rows(), DEFAULT_MAPPING)
    assert (story.title, story.phase, story.created_by) == ("Checkout", "BUILD", "ann")
    assert story.created_at == dt.datetime(2025, 2, 1, 9, tzinfo=UTC)
    assert [(s.subtask_id, s.status, s.priority, s.dependencies) for s in story.subtasks] == [
        ("T1", "DONE", 2, ()),
        ("T2", "PENDING", 3, ("T1",)),
        ("T4", "WIP", 3, ()),
    ]
    assert story.subtasks[1].created_at is None
    assert [(d.decision_id, d.decision_type, dict(d.metadata)) for d in story.decisions] == [
        ("D1", "ARCHITECTURE", {"adr": "7"}),
        ("D2", "technology", {}),
    ]
    assert story.relations == (LegacyRelation("D2", "D1", "SUPERSEDES"),)
    assert story.impacts == (LegacyImpact("D2", "T2"),)
    ids = [m.milestone_id for m in story.milestones]
    assert ids[0] == "M1" and len(ids) == 3 and len(set(ids)) == 3
    # milestone ids without a legacy id are derived from content: the same on every read
    assert ids == [m.milestone_id for m in build_story("S1", story_rows(), DEFAULT_MAPPING).milestones]
    problems = {(p.node, p.reason) for p in story.problems}
    assert problems == {
        ("Subtask #2:2", "missing subtask_id; node skipped"),
        ("Subtask #2:3", "subtask_id 'T 3' is not 1-64 letters, digits, '_' or '-'; node skipped"),
        ("subtask T1", "another Subtask of this story has the same subtask_id; node #2:5 skipped"),
        ("subtask T2", "created_at 'soon' is not an ISO 8601 time; left out"),
        ("subtask T4", "unknown status 'WIP'; imported as PENDING (map it in status_aliases)"),
        ("subtask T4", "priority [1] is not an integer; imported as 3"),
        (
            "subtask T2 -[DEPENDS_ON]->",
            "points at subtask node #2:2, which was skipped (see its problem); edge dropped",
        ),
        ("subtask T1 -[DEPENDS_ON]->", "points at 'T7', which is not a subtask of this story; edge dropped"),
        ("decision D2", "metadata is not a JSON object; left empty"),
        ("decision D1 -[DEPENDS_ON]->", "points at '#2:0', which is not a decision of this story; edge dropped"),
        ("decision D1 -[IMPACTS]->", "points at subtask node #2:3, which was skipped (see its problem); edge dropped"),
    }
    assert all(p.story_id == "S1" for p in story.problems)


def test_unknown_phase_and_missing_values_use_documented_defaults():
    rows = StoryRows(
        story=Node("#1:0", story_id="S1", title="T", phase="someday"),
        subtasks=[Node("#2:0", subtask_id="T1", title="x", role="DEV")],
    )
    story = build_story("S1", rows, DEFAULT_MAPPING)
    assert story.phase == "SOMEDAY"
    assert [p.reason for p in story.problems] == [
        "unknown phase 'someday'; the story stays in DESIGN (map it in phase_aliases)"
    ]
    assert (story.subtasks[0].status, story.subtasks[0].priority, story.subtasks[0].estimated_hours) == (
        "PENDING",
        3,
        0,
    )
    no_phase = build_story("S1", StoryRows(story=Node("#1:0", story_id="S1", title="T")), DEFAULT_MAPPING)
    assert no_phase.phase == "DESIGN" and not no_phase.problems


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        ("- Kafka: too heavy\n- SQS", (Alternative("Kafka", "too heavy"), Alternative("SQS"))),
        (
            '[{"title": "Kafka", "reason": "too heavy"}, {"title": "SQS", "reason": ""}]',
            (Alternative("Kafka", "too heavy"), Alternative("SQS")),
        ),
        (["Kafka", "SQS"], (Alternative("Kafka"), Alternative("SQS"))),
        ("[draft] Kafka", (Alternative("[draft] Kafka"),)),
    ],
)
def test_alternatives_as_text_lists_or_the_projections_json(value, expected):
    rows = StoryRows(
        story=Node("#1:0", story_id="S1", title="T"),
        decisions=[Node("#3:0", decision_id="D1", title="Queue", rationale="r", alternatives=value)],
    )
    story = build_story("S1", rows, DEFAULT_MAPPING)
    assert story.decisions[0].alternatives == expected and not story.problems


def test_unusable_alternatives_are_reported():
    rows = StoryRows(
        story=Node("#1:0", story_id="S1", title="T"),
        decisions=[Node("#3:0", decision_id="D1", title="Queue", rationale="r", alternatives=[1, 2])],
    )
    story = build_story("S1", rows, DEFAULT_MAPPING)
    assert story.decisions[0].alternatives == ()
    assert [p.node for p in story.problems] == ["decision D1"]
    assert story.problems[0].reason.startswith("alternatives: each alternative must be")
