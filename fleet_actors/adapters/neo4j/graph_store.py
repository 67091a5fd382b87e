"""Writes events into the graph exactly once (version guard in the same transaction) and reads it back."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import neo4j
import neo4j.exceptions
from neo4j import AsyncGraphDatabase

from fleet_actors.adapters.neo4j.graph_mapping import (
    CONSTRAINTS,
    READ_VERSIONS,
    SNAPSHOT_NODES,
    chained,
    plan_graph_writes,
    snapshot_row,
)
from fleet_actors.adapters.neo4j.graph_queries import (
    CENSUS_QUERIES,
    NEIGHBOURHOOD_QUERIES,
    NODE_TYPES,
    ORPHAN_COUNT,
    ORPHANS,
    PLAIN_ID_QUERIES,
    ROOT_QUERIES,
    STORY_PARTS,
    WIPE_STORIES,
)
from fleet_actors.domain.events import EventEnvelope
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import BackendError, BackendUnavailable, InvalidCommand, StoryError
from fleet_actors.ports.read_models import GraphApplyResult, GraphCensus, GraphReadModel, SnapshotLink, plan_apply
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: attempts at a transaction that conflicts with a concurrent one (then BackendUnavailable: the
#: projector's backoff takes over)
CONFLICT_RETRIES = 8
#: stories per statement when wiping subgraphs
WIPE_CHUNK = 200


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


class GraphStore(GraphReadModel):
    def __init__(self, driver: neo4j.AsyncDriver, settings: Settings, database: str | None = None) -> None:
        self._driver = driver
        self.database = database or settings.neo4j_database

    @classmethod
    async def connect(cls, settings: Settings, database: str | None = None) -> GraphStore:
        """A store on ``database`` (default FLEET_NEO4J_DATABASE) with a driver of its own: over Bolt,
        ArcadeDB keeps a pooled connection on the first database it used (graph_databases.py)."""
        driver = AsyncGraphDatabase.driver(
            settings.neo4j_uri,
            auth=(settings.neo4j_user, settings.neo4j_password),
            max_transaction_retry_time=5.0,  # then our own backoff takes over, and reports it
            connection_acquisition_timeout=10.0,
        )
        store = cls(driver, settings, database)
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
            async with self._driver.session(database=self.database) as session:
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
            versions = {r["id"]: r["version"] or 0 async for r in await tx.run(READ_VERSIONS, ids=list(events))}
            result, to_apply, touched = plan_apply(versions, events, states)
            statements = plan_graph_writes(to_apply, touched)
            if statements:
                cypher, parameters = chained(statements)
                await (await tx.run(cypher, parameters)).consume()
            return result

        for attempt in range(CONFLICT_RETRIES):
            try:
                async with (
                    self._driver.session(database=self.database) as session,
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

    async def link_snapshots(self, links: Sequence[SnapshotLink]) -> None:
        if links:
            await self.write(SNAPSHOT_NODES, rows=[snapshot_row(s.story_id, s.version, s.at) for s in links])

    async def wipe_stories(self, story_ids: Sequence[str]) -> None:
        ids = list(story_ids)
        for start in range(0, len(ids), WIPE_CHUNK):
            await self.write(WIPE_STORIES, ids=ids[start : start + WIPE_CHUNK])

    async def story_rows(self, story_id: str) -> dict[str, list[dict[str, Any]]]:
        return {part: await self.query(cypher, id=story_id) for part, cypher in STORY_PARTS.items()}

    async def census(self, orphan_limit: int = 20) -> GraphCensus:
        counts = {name: (await self.query(cypher))[0]["n"] for name, cypher in CENSUS_QUERIES.items()}
        orphans = [f"{row['label']} {row['uid']}" for row in await self.query(ORPHANS, limit=orphan_limit)]
        orphan_count = (await self.query(ORPHAN_COUNT))[0]["n"] if orphans else 0
        return GraphCensus(counts["stories"], counts["nodes"], counts["edges"], orphans, orphan_count)

    async def neighbourhood(
        self, node_type: str, node_id: str, depth: int, limit: int
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if node_type not in NODE_TYPES or (node_type, depth) not in NEIGHBOURHOOD_QUERIES:
            raise InvalidCommand(f"no graph query for a {node_type!r} node at depth {depth}", field="node_type")
        roots = await self.query(ROOT_QUERIES[node_type], id=node_id)
        if not roots:
            return None, []
        return roots[0], await self.query(NEIGHBOURHOOD_QUERIES[node_type, depth], id=node_id, limit=limit)

    async def qualified_ids(self, node_type: str, plain_id: str, limit: int) -> list[str]:
        if node_type not in PLAIN_ID_QUERIES:
            raise InvalidCommand(f"no plain-id lookup for a {node_type!r} node", field="node_type")
        return [str(row["uid"]) for row in await self.query(PLAIN_ID_QUERIES[node_type], id=plain_id, limit=limit)]

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the graph database answers a query."""
        await self.query("RETURN 1 AS ok")

    # Raw Cypher, for this adapter's own methods, tests and the benchmarks' raw baseline; the rest
    # of the package goes through the GraphReadModel port.

    async def query(self, cypher: str, **parameters: Any) -> list[dict[str, Any]]:
        """A read query; records as dicts."""
        try:
            async with self._driver.session(database=self.database, default_access_mode=neo4j.READ_ACCESS) as s:
                result = await s.run(cypher, parameters)
                return [record.data() async for record in result]
        except Exception as error:
            raise translate_neo4j_error(error, "reading the graph") from None

    async def query_write(self, cypher: str, **parameters: Any) -> list[dict[str, Any]]:
        """A write query whose records are wanted (e.g. counts of deleted nodes)."""
        try:
            async with self._driver.session(database=self.database) as session:
                result = await session.run(cypher, parameters)
                return [record.data() async for record in result]
        except Exception as error:
            raise translate_neo4j_error(error, "writing the graph") from None

    async def write(self, cypher: str, **parameters: Any) -> None:
        try:
            async with self._driver.session(database=self.database) as session:
                await (await session.run(cypher, parameters)).consume()
        except Exception as error:
            raise translate_neo4j_error(error, "writing the graph") from None
