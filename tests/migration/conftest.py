"""Fixtures for the migration tests: the session's graph server as the legacy graph, a private stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_actors.migration.legacy_reader import LegacySource
from fleet_actors.migration.mapping import LegacyMapping, load_mapping
from fleet_actors.settings import Settings
from tests.integration.conftest import event_store, stream_settings  # noqa: F401 - fixtures used here too

#: the legacy sample gets labels of its own: the projection writes the same story ids as Story nodes
LEGACY_MAPPING_FILE = Path(__file__).with_name("legacy_mapping.json")


@pytest.fixture(scope="session")
def legacy_mapping() -> LegacyMapping:
    return load_mapping(LEGACY_MAPPING_FILE)


@pytest.fixture(scope="session")
def legacy_source(settings: Settings) -> LegacySource:
    """The session's ArcadeDB, read as a legacy graph."""
    return LegacySource(settings.neo4j_uri, settings.neo4j_user, settings.neo4j_password, settings.neo4j_database)
