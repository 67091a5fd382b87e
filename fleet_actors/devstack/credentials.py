"""Credentials of a local stack, generated once per data dir and kept readable by the owner only.

``DATA_DIR/credentials/`` (0700) holds ``credentials.json`` (0600): a password per NATS identity
(see :data:`NATS_ROLES`), the Valkey password and the graph server's root password. The servers
read them from their own 0600 config files (never from a command line); clients get them through
``fleet.env`` (0600). Nothing here prints or logs a secret.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fleet_actors.errors import ConfigurationError

#: the NATS identities of the local stack, each with its own password and permissions
#: (fleet_actors.devstack.nats_permissions): ``admin`` may do anything, including creating, editing,
#: purging and deleting streams; the others only what their component uses.
NATS_ROLES: tuple[str, ...] = ("admin", "story", "projector", "gateway", "operator")


def _new_secret() -> str:
    return secrets.token_hex(24)  # URL-safe: it can sit in a URL's user info without escaping


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, readable and writable by the owner only (0600)."""
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(partial, 0o600)  # O_CREAT's mode does not apply to a file left behind by a killed run
    partial.replace(path)
    return path


@dataclass(frozen=True, repr=False)
class StackCredentials:
    """The secrets of one local stack; ``repr`` shows none of them."""

    nats: dict[str, str]
    valkey: str
    graph: str

    def __repr__(self) -> str:
        return f"StackCredentials(nats_users={sorted(self.nats)!r}, valkey=***, graph=***)"

    @classmethod
    def load_or_create(cls, directory: Path, *, graph_default: str) -> StackCredentials:
        """The credentials in ``directory/credentials.json``, created on first use (and completed when a
        role is missing). ``graph_default`` (if any) is kept for a graph data dir created before credentials
        existed: ArcadeDB fixes its root password when it creates the data dir."""
        private_dir(directory)
        path = directory / "credentials.json"
        saved: dict[str, object] = {}
        if path.exists():
            try:
                loaded = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ConfigurationError(f"{path} is not valid JSON: {err.msg}") from None
            if not isinstance(loaded, dict):
                raise ConfigurationError(f"{path} does not hold a JSON object")
            saved = loaded
        raw_nats = saved.get("nats")
        nats = {str(k): str(v) for k, v in raw_nats.items()} if isinstance(raw_nats, dict) else {}
        for role in NATS_ROLES:
            nats.setdefault(role, _new_secret())
        valkey = str(saved.get("valkey") or _new_secret())
        graph = str(saved.get("graph") or graph_default or _new_secret())
        credentials = cls(nats=nats, valkey=valkey, graph=graph)
        record = {"nats": nats, "valkey": valkey, "graph": graph}
        if record != saved:
            write_private(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        else:
            path.chmod(0o600)
        return credentials
