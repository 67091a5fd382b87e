from __future__ import annotations

import pytest

from fleet_actors.adapters.memory.event_store import InMemoryEventStore
from tests.unit.event_store_contract import EventStoreContract


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def store(self):
        return InMemoryEventStore()
