"""The graph server's databases, for graph blue/green: a version of the graph lives in a database of
its own beside the live one, where the server has more than one.

- ArcadeDB: databases are created and dropped through its HTTP API (``FLEET_NEO4J_HTTP_URL``; Bolt
  answers ``CREATE DATABASE`` with a syntax error). Over Bolt a pooled connection stays on the first
  database it used (a later session's ``database=`` is ignored), so each database needs a driver
  of its own: ``GraphStore.connect(settings, database=...)`` opens one.
- Neo4j Enterprise: ``CREATE DATABASE`` / ``DROP DATABASE`` on the system database.
- Neo4j Community has one user database: :class:`GraphBlueGreenUnsupported`, and today's rebuild
  (``fleet-actors rebuild``) is the way to rebuild the graph.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.error
import urllib.request

import neo4j
from neo4j import AsyncGraphDatabase

from fleet_actors.adapters.neo4j.graph_store import translate_neo4j_error
from fleet_actors.errors import BackendUnavailable, ConfigurationError, GraphBlueGreenUnsupported
from fleet_actors.settings import Settings

#: a version's database name: letters, digits and dashes (valid on ArcadeDB and Neo4j)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")


def graph_database(settings: Settings, version: int) -> str:
    """The database of version ``version`` of the graph (1: the live one, ``FLEET_NEO4J_DATABASE``)."""
    return settings.neo4j_database if version <= 1 else f"{settings.neo4j_database}-v{version}"


class GraphDatabases:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def server_kind(self) -> str:
        """``arcadedb``, ``neo4j-enterprise`` or ``neo4j-community``."""
        driver = AsyncGraphDatabase.driver(
            self._settings.neo4j_uri, auth=(self._settings.neo4j_user, self._settings.neo4j_password)
        )
        try:
            info = await driver.get_server_info()
            if "arcadedb" in info.agent.lower():
                return "arcadedb"
            async with driver.session(database="system") as session:
                record = await (await session.run("CALL dbms.components() YIELD edition RETURN edition")).single()
            return "neo4j-enterprise" if record and record["edition"] == "enterprise" else "neo4j-community"
        except Exception as error:
            raise translate_neo4j_error(error, "asking the graph server what it is") from None
        finally:
            await driver.close()

    async def check_supported(self) -> str:
        """The server kind, or GraphBlueGreenUnsupported saying why not and what to do instead."""
        kind = await self.server_kind()
        if kind == "neo4j-community":
            raise GraphBlueGreenUnsupported(
                "Neo4j Community has one user database: graph blue/green needs ArcadeDB or Neo4j Enterprise; "
                "rebuild the graph in place with `fleet-actors rebuild` (it pauses the live projectors)"
            )
        if kind == "arcadedb" and not self._settings.neo4j_http_url:
            raise GraphBlueGreenUnsupported(
                "ArcadeDB creates databases through its HTTP API only: set FLEET_NEO4J_HTTP_URL "
                "(dev up writes it in fleet.env)"
            )
        return kind

    async def create(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        kind = await self.check_supported()
        _check_name(name)
        if kind == "arcadedb":
            if name not in await self._arcadedb("list databases"):
                await self._arcadedb(f"create database {name}")
        else:
            await self._system("CREATE DATABASE $name IF NOT EXISTS WAIT", name)

    async def drop(self, name: str, *, live_too: bool = False) -> None:
        """Drop database ``name`` (and everything in it) if it exists. ``FLEET_NEO4J_DATABASE`` (the graph's
        version 1) only with ``live_too``, once nobody reads or writes it (``projections drop graph 1``)."""
        kind = await self.check_supported()
        _check_name(name)
        if name == self._settings.neo4j_database and not live_too:
            raise ConfigurationError(f"{name} is the live graph database: it is never dropped", field="database")
        if kind == "arcadedb":
            if name in await self._arcadedb("list databases"):
                await self._arcadedb(f"drop database {name}")
        else:
            await self._system("DROP DATABASE $name IF EXISTS WAIT", name)

    async def _arcadedb(self, command: str) -> list[str]:
        settings = self._settings
        token = base64.b64encode(f"{settings.neo4j_user}:{settings.neo4j_password}".encode()).decode()
        request = urllib.request.Request(
            settings.neo4j_http_url.rstrip("/") + "/api/v1/server",
            data=json.dumps({"command": command}).encode(),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )

        def call() -> object:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read()).get("result")

        try:
            result = await asyncio.to_thread(call)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise ConfigurationError(f"ArcadeDB refused {command!r}: {error.code} {detail}") from None
        except (OSError, ValueError) as error:
            raise BackendUnavailable(f"ArcadeDB's HTTP API is unavailable ({command!r}): {error}") from None
        return [str(item) for item in result] if isinstance(result, list) else []

    async def _system(self, cypher: str, name: str) -> None:
        settings = self._settings
        driver = AsyncGraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.neo4j_password))
        try:
            async with driver.session(database="system") as session:
                await (await session.run(cypher, name=name)).consume()
        except neo4j.exceptions.Neo4jError as error:
            raise translate_neo4j_error(error, f"running {cypher.split('$')[0].strip()} {name}") from None
        finally:
            await driver.close()


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"{name!r} is not a graph database name ([A-Za-z][A-Za-z0-9-]*)", field="database")
