"""`fleet-actors migrate import|verify|mapping` end to end (the parser `register` adds, in process)."""

from __future__ import annotations

import argparse
import asyncio
import json

import nats
import nats.js.errors
import pytest

from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.cli import migrate_cmd
from fleet_actors.domain.commands import RecordMilestone
from fleet_actors.errors import ConfigurationError
from fleet_actors.migration.sample import write_sample
from fleet_actors.settings import Settings
from tests.migration.conftest import LEGACY_MAPPING_FILE


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fleet-actors")
    migrate_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


async def stream_exists(settings: Settings) -> bool:
    nc = await nats.connect(settings.nats_url)
    try:
        await nc.jsm().stream_info(settings.stream_name)
        return True
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await nc.close()


async def record_milestone(settings: Settings, story_id: str) -> None:
    store = await JetStreamEventStore.connect(settings)
    try:
        request = CommandRequest(story_id, RecordMilestone("DEMO", "after the import"), "live-1", "dana")
        await StoryRuntime(story_id, store).execute(request)
    finally:
        await store.close()


@pytest.fixture
def legacy_args(monkeypatch, stream_settings, legacy_source) -> list[str]:
    """The settings as FLEET_* variables, the legacy password in its variable; the flags every call shares."""
    for key, value in stream_settings.as_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLEET_LEGACY_NEO4J_PASSWORD", legacy_source.password)
    return [
        "--from-neo4j",
        legacy_source.uri,
        "--user",
        legacy_source.user,
        "--database",
        legacy_source.database,
        "--mapping",
        str(LEGACY_MAPPING_FILE),
    ]


def test_dry_run_import_verify_and_reimport(
    legacy_args, legacy_source, legacy_mapping, stream_settings, unique_id, capsys
):
    prefix = unique_id("L")
    generated = asyncio.run(write_sample(legacy_source, 8, prefix=prefix, mapping=legacy_mapping)).stories
    scope = [*legacy_args, "--story-prefix", f"{prefix}-"]

    assert cli("migrate", "import", *scope, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was written" in out and "would import: 8 new stories" in out
    assert not asyncio.run(stream_exists(stream_settings))

    assert cli("migrate", "import", *scope, "--dry-run", "--since", "2999-01-01T00:00:00Z") == 0
    assert "would import: 0 new stories" in capsys.readouterr().out

    assert cli("migrate", "import", *scope) == 0
    assert "imported: 8 new stories, 0 resumed" in capsys.readouterr().out
    assert cli("migrate", "verify", *scope) == 0
    assert capsys.readouterr().out.endswith("8 stories compared, 0 differences, 0 problems\n")

    assert cli("migrate", "import", *scope) == 0
    assert "imported: 0 new stories, 0 resumed (0 events); 8 already imported" in capsys.readouterr().out

    changed = generated[3]
    asyncio.run(record_milestone(stream_settings, changed.story_id))
    assert cli("migrate", "verify", *scope) == 1
    count = len(changed.milestones)
    assert f"{changed.story_id}: milestone count: legacy graph [{count}] event log [{count + 1}]" in (
        capsys.readouterr().out
    )


def test_mapping_prints_the_effective_mapping_and_refuses_bad_ones(tmp_path, capsys):
    assert cli("migrate", "mapping") == 0
    assert json.loads(capsys.readouterr().out)["story"]["label"] == "Story"
    assert cli("migrate", "mapping", "--mapping", str(LEGACY_MAPPING_FILE)) == 0
    assert json.loads(capsys.readouterr().out)["subtask"]["label"] == "LegacyTask"
    bad = tmp_path / "bad.json"
    bad.write_text('{"story": {"label": "Story; DROP"}}')
    with pytest.raises(ConfigurationError, match=r"story\.label must be an identifier"):
        cli("migrate", "mapping", "--mapping", str(bad))


def test_a_bad_since_is_a_usage_error(legacy_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli("migrate", "import", *legacy_args, "--since", "last tuesday")
    assert exit_.value.code == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err
