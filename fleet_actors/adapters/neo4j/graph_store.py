"""Writes events into the graph exactly once (version guard in the same transaction) and reads it back."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import neo4j
import neo4j.exceptions
from neo4j import AsyncGraphDatabase

from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import BackendError, BackendUnavailable, StoryError
from fleet_actors.projections.graph_mapping import CONSTRAINTS, READ_VERSIONS, chained, plan_graph_writes
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: attempts at a transaction that conflicts with a concurrent one (then BackendUnavailable: the
#: projector's backoff takes over)
CONFLICT_RETRIES = 8


def translate_neo4j_error(error: BaseException, what: str) -> StoryError:
    """The one place driver errors become ours."""
    if isinstance(error, StoryError):
        return error
    if isinstance(
        error,
        neo4j.exceptions.ServiceUnavailable
        | neo4j.exceptions.SessionExpired
        | neo4j.exceptions.TransientError
        | ConnectionError
        | OSError
        | asyncio.TimeoutError,
    ):
        return BackendUnavailable(f"the graph database is unavailable while {what}: {error}")
    if isinstance(error, neo4j.exceptions.AuthError):
        return BackendUnavailable(f"the graph database refused our credentials while {what}")
    return BackendError(f"the graph database failed while {what}: {error}")


@dataclass
class GraphApplyResult:
    #: story -> graph version after the transaction
    versions: dict[str, int] = field(default_factory=dict)
    #: stories whose first new event does not follow the graph's version (missing events: heal from the log)
    gaps: dict[str, int] = field(default_factory=dict)
    applied_events: int = 0


class GraphStore:
    def __init__(self, driver: neo4j.AsyncDriver, settings: Settings) -> None:
        self._driver = driver
        self._database = settings.neo4j_database

    @classmethod
    async def connect(cls, settings: Settings) -> GraphStore:
        driver = AsyncGraphDatabase.driver(
            settings.neo4j_uri,
            auth=(settings.neo4j_user, settings.neo4j_password),
            max_transaction_retry_time=5.0,  # then our own backoff takes over, and reports it
            connection_acquisition_timeout=10.0,
        )
        store = cls(driver, settings)
        try:
            await store.ensure_constraints()
        except BaseException:
            await driver.close()
            raise
        return store

    async def close(self) -> None:
        await self._driver.close()

    async def ensure_constraints(self) -> None:
        """Uniqueness constraints first: MERGE without them scans every node."""
        try:
            async with self._driver.session(database=self._database) as session:
                for statement in CONSTRAINTS:
                    await session.run(statement)
        except Exception as error:
            raise translate_neo4j_error(error, "creating constraints") from None

    async def applied_versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        records = await self.query(READ_VERSIONS, ids=list(story_ids))
        return {r["id"]: r["version"] or 0 for r in records}

    async def apply(
        self, events: Mapping[str, Sequence[EventEnvelope]], states: Mapping[str, StoryState]
    ) -> GraphApplyResult:
        """Apply each story's events in one transaction, skipping what the graph already has.

        ``states[story]`` is the story folded up to its last event in ``events``: it sets the story
        node's summary and version. A story whose events don't follow its graph version is not
        touched and is reported in ``gaps``.
        """

        async def work(tx: neo4j.AsyncTransaction) -> GraphApplyResult:
            result = GraphApplyResult()
            versions = {r["id"]: r["version"] or 0 async for r in await tx.run(READ_VERSIONS, ids=list(events))}
            to_apply: list[EventEnvelope] = []
            touched: list[StoryState] = []
            for story_id, story_events in events.items():
                current = versions.get(story_id, 0)
                fresh = [e for e in story_events if e.version > current]
                result.versions[story_id] = current
                if not fresh:
                    continue
                if fresh[0].version != current + 1 or states[story_id].version != fresh[-1].version:
                    result.gaps[story_id] = current
                    continue
                to_apply.extend(fresh)
                touched.append(states[story_id])
                result.versions[story_id] = fresh[-1].version
            statements = plan_graph_writes(to_apply, touched)
            if statements:
                cypher, parameters = chained(statements)
                await (await tx.run(cypher, parameters)).consume()
            result.applied_events = len(to_apply)
            return result

        for attempt in range(CONFLICT_RETRIES):
            try:
                async with (
                    self._driver.session(database=self._database) as session,
                    await session.begin_transaction() as transaction,  # rolled back unless committed
                ):
                    result = await work(transaction)
                    await transaction.commit()
                    return result
            except (neo4j.exceptions.ConstraintError, neo4j.exceptions.TransientError) as error:
                # Concurrent writers: ArcadeDB reports page-level conflicts (and a MERGE racing another as
                # a ConstraintError); Neo4j deadlocks. Retry soon, with jitter: the driver's own retry
                # waits a second or more, which shows up directly as projection lag.
                if attempt == CONFLICT_RETRIES - 1:
                    raise translate_neo4j_error(error, "applying events to the graph") from None
                await asyncio.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
            except Exception as error:
                raise translate_neo4j_error(error, "applying events to the graph") from None
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the graph database answers a query."""
        await self.query("RETURN 1 AS ok")

    async def query(self, cypher: str, **parameters: Any) -> list[dict[str, Any]]:
        """A read query; records as dicts."""
        try:
            async with self._driver.session(database=self._database, default_access_mode=neo4j.READ_ACCESS) as s:
                result = await s.run(cypher, parameters)
                return [record.data() async for record in result]
        except Exception as error:
            raise translate_neo4j_error(error, "reading the graph") from None

    async def query_write(self, cypher: str, **parameters: Any) -> list[dict[str, Any]]:
        """A write query whose records are wanted (e.g. counts of deleted nodes)."""
        try:
            async with self._driver.session(database=self._database) as session:
                result = await session.run(cypher, parameters)
                return [record.data() async for record in result]
        except Exception as error:
            raise translate_neo4j_error(error, "writing the graph") from None

    async def write(self, cypher: str, **parameters: Any) -> None:
        try:
            async with self._driver.session(database=self._database) as session:
                await (await session.run(cypher, parameters)).consume()
        except Exception as error:
            raise translate_neo4j_error(error, "writing the graph") from None
