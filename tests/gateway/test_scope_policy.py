"""The scope policy file and its lookups (no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_actors.errors import ConfigurationError, InvalidCommand, RuleViolation
from fleet_actors.gateway.scope_policy import POLICY_FILE_ENV, ScopePolicy, Section

# The Context Service's table (shared/specs/context-service-v1.md), verbatim.
SPEC_TABLE = {
    ("DESIGN", "ARCHITECT"): "CASE_HEADER, PLAN_HEADER, DECISIONS_GLOBAL, DEPS_DECISIONS, MILESTONES, SUMMARY_LAST",
    ("DESIGN", "DEV"): "CASE_HEADER, PLAN_HEADER, DECISIONS_RELEVANT_ROLE, DEPS_RELEVANT, SUMMARY_LAST",
    ("DESIGN", "QA"): "CASE_HEADER, PLAN_HEADER, DECISIONS_GLOBAL, SUBTASKS_ALL, MILESTONES, SUMMARY_LAST",
    ("BUILD", "ARCHITECT"): "CASE_HEADER, PLAN_HEADER, DECISIONS_GLOBAL, DEPS_DECISIONS, SUBTASKS_ALL, MILESTONES",
    ("BUILD", "DEV"): "CASE_HEADER, PLAN_HEADER, SUBTASKS_ROLE, DECISIONS_RELEVANT_ROLE, DEPS_RELEVANT",
    ("BUILD", "QA"): "CASE_HEADER, PLAN_HEADER, SUBTASKS_ALL_MIN, DECISIONS_GLOBAL_MIN, MILESTONES",
    ("TEST", "ARCHITECT"): "CASE_HEADER, PLAN_HEADER, DECISIONS_GLOBAL_MIN, SUBTASKS_ALL_MIN",
    ("TEST", "DEV"): "CASE_HEADER, PLAN_HEADER, SUBTASKS_ROLE_MIN",
    ("TEST", "QA"): "CASE_HEADER, PLAN_HEADER, DECISIONS_GLOBAL, SUBTASKS_ALL, MILESTONES",
}


@pytest.fixture(scope="module")
def policy() -> ScopePolicy:
    return ScopePolicy.load(Path(__file__).parents[2] / "fleet_actors" / "config" / "scope_policy.json")


def names(sections: tuple[Section, ...]) -> list[str]:
    return [s.value for s in sections]


@pytest.mark.parametrize(("phase", "role"), sorted(SPEC_TABLE))
def test_packaged_policy_is_the_spec_table(policy: ScopePolicy, phase: str, role: str) -> None:
    assert names(policy.scope(role, phase).sections) == SPEC_TABLE[phase, role].split(", ")


@pytest.mark.parametrize("phase", ["DESIGN", "BUILD", "TEST", "DOCS"])
@pytest.mark.parametrize("role", ["DEVOPS", "DATA"])
def test_devops_and_data_follow_the_developer_row(policy: ScopePolicy, role: str, phase: str) -> None:
    assert policy.scope(role, phase).sections == policy.scope("DEV", phase).sections


def test_docs_is_the_doc_row_and_every_role_has_one(policy: ScopePolicy) -> None:
    assert policy.phases["DOCS"] == "DOC"
    for role in policy.agent_roles:
        sections = policy.scope(role, "docs").sections
        assert sections[:2] == (Section.CASE_HEADER, Section.PLAN_HEADER)
        assert Section.SUMMARY_LAST in sections


def test_inputs_are_case_insensitive(policy: ScopePolicy) -> None:
    assert policy.scope(" dev ", "build") == policy.scope("DEV", "BUILD")
    assert policy.scope("Qa", "Test").role == "QA"
    assert policy.scope("architect", "docs").phase == "DOCS"
    check = policy.validate("dev", "test", ["case_header", "Plan_Header", " subtasks_role_min "])
    assert check.allowed and not check.missing and not check.extra


def test_dev_owns_subtasks_labelled_dev_or_developer_only(policy: ScopePolicy) -> None:
    assert policy.scope("DEV", "BUILD").subtask_roles == {"DEV", "DEVELOPER"}
    assert policy.scope("DEVOPS", "BUILD").subtask_roles == {"DEVOPS"}


@pytest.mark.parametrize(("role", "phase", "field"), [("", "BUILD", "role"), ("CHEF", "BUILD", "role"),
                                                       ("DEV", "LAUNCH", "phase"), ("DEV", "", "phase")])  # fmt: skip
def test_unknown_role_or_phase_names_the_field(policy: ScopePolicy, role: str, phase: str, field: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        policy.scope(role, phase)
    assert caught.value.field == field


@pytest.mark.parametrize("role", ["architect", "developer", "devops", "qa", "data", "DEV", "QA", "ARCHITECT"])
@pytest.mark.parametrize("phase", ["DESIGN", "BUILD", "TEST", "DOC", "DOCS", "doc"])
def test_every_name_the_callers_send_resolves_without_warnings(policy: ScopePolicy, role: str, phase: str) -> None:
    scope, warnings = policy.resolve(role, phase)
    assert warnings == ()
    assert scope.sections == policy.scope(role, "DOCS" if phase.upper() == "DOC" else phase).sections


@pytest.mark.parametrize(("role", "phase", "unknown"), [("developer", "PLAN", "phase 'PLAN'"),
                                                        ("qa", "VALIDATE", "phase 'VALIDATE'"),
                                                        ("CHEF", "BUILD", "role 'CHEF'"),
                                                        ("DEV", "", "phase ''")])  # fmt: skip
def test_unknown_role_or_phase_gets_the_minimum_and_a_warning(
    policy: ScopePolicy, role: str, phase: str, unknown: str
) -> None:
    scope, warnings = policy.resolve(role, phase)
    assert names(scope.sections) == ["CASE_HEADER", "PLAN_HEADER"]
    assert any(unknown in w for w in warnings) and any("minimum" in w for w in warnings)
    check = policy.validate(role, phase, ["CASE_HEADER", "PLAN_HEADER"])
    assert check.allowed and unknown in check.reason
    with pytest.raises(InvalidCommand) as caught:
        policy.resolve("", phase)
    assert caught.value.field == "role"


def test_the_story_phases_come_from_the_file(policy: ScopePolicy, tmp_path: Path) -> None:
    phases = policy.story_phases
    assert phases.order == ("PLAN", "DESIGN", "BUILD", "VALIDATE", "TEST", "DOCS")
    assert phases.canonical("doc", "to_phase") == "DOCS" and phases.initial == "DESIGN"
    path = write_policy(tmp_path, lambda d: d["story_phases"].update(optional=["SHIP"]))
    with pytest.raises(ConfigurationError, match="story_phases"):
        ScopePolicy.load(path)


def test_validate_reports_missing_and_extra(policy: ScopePolicy) -> None:
    check = policy.validate("QA", "BUILD", ["CASE_HEADER", "PLAN_HEADER", "MILESTONES", "SUBTASKS_ALL", "BOGUS"])
    assert not check.allowed
    assert check.missing == ("SUBTASKS_ALL_MIN", "DECISIONS_GLOBAL_MIN")
    assert check.extra == ("BOGUS", "SUBTASKS_ALL")
    assert "missing" in check.reason and "BOGUS" in check.reason
    assert policy.validate("QA", "BUILD", []).missing == tuple(SPEC_TABLE["BUILD", "QA"].split(", "))


def test_importance_lists_every_section_once(policy: ScopePolicy) -> None:
    assert sorted(policy.importance) == sorted(Section)
    assert policy.importance[0] == Section.CASE_HEADER


def write_policy(tmp_path: Path, change) -> Path:
    data = json.loads((Path(__file__).parents[2] / "fleet_actors" / "config" / "scope_policy.json").read_text())
    change(data)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(data))
    return path


def test_the_environment_variable_names_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def narrow(data: dict) -> None:
        data["policy"]["BUILD"]["developer"] = ["CASE_HEADER"]

    monkeypatch.setenv(POLICY_FILE_ENV, str(write_policy(tmp_path, narrow)))
    policy = ScopePolicy.load()
    assert names(policy.scope("DEV", "BUILD").sections) == ["CASE_HEADER"]
    assert policy.source.endswith("policy.json")


def test_a_row_without_the_role_is_a_rule_violation(tmp_path: Path) -> None:
    def drop(data: dict) -> None:
        del data["policy"]["TEST"]["data"]

    policy = ScopePolicy.load(write_policy(tmp_path, drop))
    with pytest.raises(RuleViolation) as caught:
        policy.scope("DATA", "TEST")
    assert caught.value.field == "role"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["policy"]["BUILD"]["qa"].append("EVERYTHING"), "unknown section 'EVERYTHING'"),
        (lambda d: d["importance"].remove("MILESTONES"), "missing: MILESTONES"),
        (lambda d: d["phases"].update(RELEASE="RELEASE"), "row 'RELEASE'"),
        (lambda d: d["roles"].update(PM="manager"), "column 'manager'"),
        (lambda d: d["policy"]["BUILD"].update(qa="CASE_HEADER"), "must be a list"),
        (lambda d: d["policy"]["BUILD"]["qa"].append("CASE_HEADER"), "twice"),
        (lambda d: d.pop("roles"), "roles must be"),
    ],
)
def test_a_bad_policy_file_is_a_clear_configuration_error(tmp_path: Path, change, problem: str) -> None:
    path = write_policy(tmp_path, change)
    with pytest.raises(ConfigurationError) as caught:
        ScopePolicy.load(path)
    assert str(path) in caught.value.message and problem in caught.value.message


def test_unreadable_or_invalid_json_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLICY_FILE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="cannot be read"):
        ScopePolicy.load()
    broken = tmp_path / "broken.json"
    broken.write_text("{roles: ")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        ScopePolicy.load(broken)
    broken.write_text("[]")
    with pytest.raises(ConfigurationError, match="JSON object"):
        ScopePolicy.load(broken)
