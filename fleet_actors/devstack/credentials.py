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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet_actors.errors import ConfigurationError
from fleet_actors.settings import Settings

#: the NATS identities of the local stack, each with its own password and permissions
#: (:func:`nats_permissions`): ``admin`` may do anything, including creating, editing,
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


def nats_identity_env(address: str, users: Mapping[str, str], role: str) -> dict[str, str]:
    """``role``'s NATS identity (one of ``users``: role -> password) as FLEET_* settings, for servers at
    ``address`` (a URL without user info, or a comma-separated list of them): the credentials are fields."""
    if role not in users:
        raise ConfigurationError(f"no NATS identity {role!r}; the roles are {sorted(users)}")
    return {"FLEET_NATS_URL": address, "FLEET_NATS_USER": role, "FLEET_NATS_PASSWORD": users[role]}


def nats_identity_settings(base: Settings, address: str, users: Mapping[str, str], role: str) -> Settings:
    """``base`` connecting to NATS as ``role`` (see :func:`nats_identity_env`)."""
    env = nats_identity_env(address, users, role)
    return base.replace(nats_url=env["FLEET_NATS_URL"], nats_user=role, nats_password=env["FLEET_NATS_PASSWORD"])


#: JetStream API subjects that create, edit, purge or delete streams (or their messages): the admin's alone
STREAM_ADMIN_SUBJECTS: tuple[str, ...] = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.PEER.REMOVE.>",
    "$JS.API.STREAM.LEADER.STEPDOWN.>",
    "$JS.API.ACCOUNT.PURGE.>",
    "$JS.API.META.>",
    "$JS.API.SERVER.>",
)
#: what every JetStream client needs: the API for reads and consumers, acks, flow control, replies
_JS_CLIENT = ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>"]


def nats_permissions(subject_prefix: str = "context.events") -> dict[str, dict[str, dict[str, list[str]]]]:
    """NATS permissions per role of the event store (``admin`` has none: every right).

    - ``story`` (story actors) and ``gateway`` (which hosts their callers and creates them with its
      settings): publish events, snapshots and dead letters, read and consume.
    - ``projector``: consume and acknowledge only (plus parking a dead letter); no event subject.
    - ``operator`` (the CLI's tools: status, dlq, rebuild, census): everything but stream
      administration; the archiver's retention purges, so it runs as ``admin``.
    - ``admin``: declares the streams (at start-up, or a bootstrap job), purges, deletes.

    Every role but ``admin`` is refused the :data:`STREAM_ADMIN_SUBJECTS`.
    """
    deny = list(STREAM_ADMIN_SUBJECTS)
    inbox = {"allow": ["_INBOX.>"]}
    events = [f"{subject_prefix}.>", f"{subject_prefix}-snapshots.>", f"{subject_prefix}-dlq.>"]
    writer = {"publish": {"allow": [*events, *_JS_CLIENT], "deny": deny}, "subscribe": inbox}
    return {
        "story": writer,
        "gateway": writer,
        "projector": {
            "publish": {"allow": [f"{subject_prefix}-dlq.>", *_JS_CLIENT], "deny": deny},
            "subscribe": inbox,
        },
        "operator": {"publish": {"allow": [">"], "deny": deny}, "subscribe": {"allow": [">"]}},
    }
