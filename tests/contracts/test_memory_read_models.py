"""The in-memory fakes pass the read-model contracts (milliseconds, no servers)."""

from __future__ import annotations

import pytest

from fleet_actors.adapters.memory import (
    InMemoryDeadLetterIndex,
    InMemoryDocuments,
    InMemoryGraph,
    InMemoryProjectionControl,
)
from tests.contracts.read_models_contract import (
    ContextDocumentsContract,
    DeadLetterIndexContract,
    GraphReadModelContract,
    ProjectionControlContract,
)


class TestInMemoryGraph(GraphReadModelContract):
    @pytest.fixture
    def graph(self) -> InMemoryGraph:
        return InMemoryGraph()


class TestInMemoryDocuments(ContextDocumentsContract):
    @pytest.fixture
    def documents(self) -> InMemoryDocuments:
        return InMemoryDocuments()


class TestInMemoryDeadLetterIndex(DeadLetterIndexContract):
    @pytest.fixture
    def dead_letter_index(self) -> InMemoryDeadLetterIndex:
        return InMemoryDeadLetterIndex()


class TestInMemoryProjectionControl(ProjectionControlContract):
    @pytest.fixture
    def control(self) -> InMemoryProjectionControl:
        return InMemoryProjectionControl()
