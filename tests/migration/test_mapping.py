"""The legacy mapping: defaults match the projection's graph; files are validated strictly."""

from __future__ import annotations

import json

import pytest

from fleet_actors.adapters.neo4j import graph_mapping
from fleet_actors.errors import ConfigurationError
from fleet_actors.migration.mapping import (
    DEFAULT_MAPPING,
    LegacyMapping,
    StoryMapping,
    load_mapping,
    mapping_from_json,
)
from tests.migration.conftest import LEGACY_MAPPING_FILE


def test_default_mapping_names_what_the_projection_writes():
    m = DEFAULT_MAPPING
    assert f"MERGE (s:{m.story.label} {{{m.story.id}: r.{m.story.id}}})" in graph_mapping._CREATE_STORY
    assert f"MERGE (s)-[:{m.subtask.relationship}]->(t)" in graph_mapping._CREATE_SUBTASK
    assert f"MERGE (s)-[:{m.decision.relationship}]->(d)" in graph_mapping._ADD_DECISION
    assert f"MERGE (s)-[:{m.milestone.relationship}]->(m)" in graph_mapping._MILESTONE
    assert f"MERGE (a)-[:{m.subtask.depends_on}]->(b)" in graph_mapping._SUBTASK_DEPENDS_ON
    assert f"MERGE (a)-[:{m.decision.supersedes}]->(b)" in graph_mapping._DECISION_SUPERSEDES
    assert f"MERGE (d)-[:{m.decision.impacts}]->(t)" in graph_mapping._IMPACTS
    written = {
        graph_mapping._CREATE_STORY: ("s", m.story, ("title", "description", "phase", "created_at", "created_by")),
        graph_mapping._STORY_SUMMARY: ("s", m.story, ("updated_at",)),
        graph_mapping._CREATE_SUBTASK: (
            "t",
            m.subtask,
            ("id", "title", "description", "role", "status", "priority", "estimated_hours", "created_at"),
        ),
        graph_mapping._UPDATE_SUBTASK: ("t", m.subtask, ("status", "updated_at")),
        graph_mapping._ADD_DECISION: (
            "d",
            m.decision,
            ("id", "title", "rationale", "type", "alternatives", "decided_by", "decided_at", "metadata"),
        ),
        graph_mapping._MILESTONE: ("m", m.milestone, ("id", "kind", "description", "at", "actor")),
    }
    for cypher, (var, section, names) in written.items():
        for name in names:
            assert f"{var}.{getattr(section, name)} = " in cypher, (name, cypher)


def test_a_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(
        json.dumps({"story": {"label": "Case", "created_by": None}, "status_aliases": {"wip": "in_progress"}})
    )
    mapping = load_mapping(path)
    assert (mapping.story.label, mapping.story.id, mapping.story.created_by) == ("Case", "story_id", None)
    assert mapping.subtask == DEFAULT_MAPPING.subtask
    assert mapping.subtask_status(" Wip ") == "IN_PROGRESS"
    assert mapping.subtask_status("done") == "DONE"
    assert mapping.phase("build") == "BUILD"


def test_the_test_mapping_file_loads_and_round_trips():
    mapping = load_mapping(LEGACY_MAPPING_FILE)
    assert mapping.story.label == "LegacyStory" and mapping.subtask.estimated_hours is None
    assert mapping_from_json(json.loads(json.dumps(mapping.to_json()))) == mapping
    assert load_mapping(None) is DEFAULT_MAPPING


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"story": {"label": "Story` DETACH DELETE n //"}}, "story.label must be an identifier"),
        ({"subtask": {"relationship": "HAS-TASK"}}, "subtask.relationship must be an identifier"),
        ({"decision": {"rationale": "why.text"}}, "decision.rationale must be an identifier"),
        ({"milestone": {"kind": "1kind"}}, "milestone.kind must be an identifier"),
        ({"story": {"id": None}}, "story.id must be an identifier"),
        ({"story": {"title": 7}}, "story.title must be an identifier"),
        ({"stories": {}}, "unknown keys ['stories']"),
        ({"story": {"name": "title"}}, "story has unknown keys ['name']"),
        ({"story": "Story"}, "story must be an object"),
        ({"subtask": {"label": "Story"}}, "the four node labels must differ"),
        ({"decision": {"supersedes": "DEPENDS_ON"}}, "decision.depends_on and decision.supersedes must differ"),
        ({"status_aliases": {"WIP": "WORKING"}}, "status_aliases['WIP'] must be one of PENDING"),
        ({"phase_aliases": {"": "BUILD"}}, "phase_aliases keys must be non-empty strings"),
        ({"phase_aliases": ["BUILD"]}, "phase_aliases must be an object"),
        ([], "a mapping must be a JSON object"),
    ],
)
def test_bad_mappings_are_refused_with_the_reason(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigurationError) as caught:
        load_mapping(path)
    assert message in caught.value.message
    assert str(path) in caught.value.message


def test_optional_properties_and_relationships_can_be_switched_off():
    mapping = mapping_from_json({"decision": {"supersedes": None, "metadata": None}, "subtask": {"depends_on": None}})
    assert mapping.decision.supersedes is None and mapping.subtask.depends_on is None


def test_unreadable_files_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read mapping file"):
        load_mapping(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"story": {"label": "Story",}}')
    with pytest.raises(ConfigurationError, match=r"not valid JSON: .* \(line 1, column"):
        load_mapping(broken)


def test_programmatic_mappings_are_validated_too():
    with pytest.raises(ConfigurationError, match=r"story\.label must be an identifier"):
        LegacyMapping(story=StoryMapping(label="Has Space"))
