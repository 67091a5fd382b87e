"""The one settings object: environment variables with the FLEET_ prefix, overridable by CLI flags.

Defaults run against the embedded local stack (`fleet-actors dev up`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet_actors.errors import ConfigurationError
from fleet_actors.urls import redact_url

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
#: fields whose whole value is a credential (URLs are shown without their user info instead)
_SECRET_FIELDS = frozenset({"neo4j_password", "gateway_token", "nats_password", "valkey_password"})
#: JetStream refuses more replicas than this
MAX_STREAM_REPLICAS = 5


@dataclass(frozen=True, repr=False)
class Settings:
    """Connection settings and policies. Build with :meth:`from_env`; derive with :meth:`replace`."""

    nats_url: str = "nats://127.0.0.1:4222"
    #: the NATS identity to connect as (a URL's own user info wins); keeps credentials out of URLs
    nats_user: str = ""
    nats_password: str = ""
    valkey_url: str = "valkey://127.0.0.1:6379/0"
    #: Valkey's password (``requirepass`` or an ACL user's, with ``valkey_user``); a URL's own wins
    valkey_user: str = ""
    valkey_password: str = ""
    neo4j_uri: str = "bolt://127.0.0.1:7687"
    neo4j_user: str = "root"
    neo4j_password: str = "fleet-actors-dev"
    neo4j_database: str = "neo4j"
    #: ArcadeDB's HTTP API (e.g. http://127.0.0.1:2480), through which graph blue/green creates and
    #: drops a version's database (Bolt cannot); empty on Neo4j, whose Enterprise edition does it over Bolt
    neo4j_http_url: str = ""
    #: Ray cluster address; empty means RAY_ADDRESS if set, else a local Ray runtime
    ray_address: str = ""
    ray_namespace: str = "fleet"

    stream_name: str = "CONTEXT_EVENTS"
    subject_prefix: str = "context.events"
    #: seconds; 0 keeps events forever. With `archive_url` set, the archiver deletes events older than
    #: this once they are archived and verified (the stream itself keeps max_age=0); without an
    #: archive it is refused unless `stream_max_age_force` (JetStream then deletes on a timer alone).
    stream_max_age: float = 0.0
    stream_max_age_force: bool = False
    #: cold storage for the event archive (docs/storage.md): a folder, file://..., or s3://bucket/prefix
    archive_url: str = ""
    #: JetStream replicas of every stream (events, snapshots, dead letters); their consumers follow
    #: the stream. 3 in a production cluster: a write is acknowledged once a quorum stored it.
    stream_replicas: int = 1
    #: where JetStream places the streams: a cluster name and/or comma-separated server tags
    #: (``server_tags`` in nats-server.conf); empty lets the meta leader choose
    stream_placement_cluster: str = ""
    stream_placement_tags: str = ""
    #: fixed when the stream is created: stored subjects carry a partition token (hash of the story id)
    #: and each projector owns a share of the partitions
    partitions: int = 16
    duplicate_window: float = 120.0
    #: seconds to wait for a JetStream API answer
    nats_timeout: float = 5.0
    #: GetContext and RehydrateSession wait up to this many seconds for the read models to reflect
    #: every write acknowledged before the call (the story's head); past it they answer with what is
    #: there, and the response's version says which. 0 turns fresh reads off.
    fresh_read_timeout: float = 2.0
    #: FleetClient and the gateway read a story's history, its past states and the check that its
    #: live state is current straight from the log (and archive), in their own process. Turn off (0)
    #: for callers that reach Ray but not NATS (a ray:// client elsewhere): the story actor reads then.
    direct_reads: bool = True

    #: an idle story actor passivates after this many seconds. Its Ray worker process costs ~6 ms of
    #: CPU per second while it lives (Ray's own per-process timers, docs/benchmarks.md "Idle stack"),
    #: a re-activation on a spare worker ~0.1 s and the spare's replacement ~0.6 s of CPU: about two
    #: minutes of idling cost as much as passivating and coming back
    actor_idle_seconds: float = 120.0
    #: how often an idle story actor runs its event loop for a moment, so that its NATS connection
    #: answers the server's pings (between calls the loop rests). Keep it well below the server's
    #: ping interval times its allowed unanswered pings (nats-server: 2 min x 2) and below the
    #: client's own ping interval (nats-py: 2 min).
    actor_keep_alive_seconds: float = 30.0
    #: report every story actor call to Ray's task table (`ray list tasks`, the dashboard's task
    #: view). Off by default: on the command path it costs about a fifth of the rate (docs/benchmarks.md).
    story_task_events: bool = False
    max_live_stories: int = 64
    #: memory each story actor reserves in Ray's scheduler (0: none). Set it in a cluster (~100): Ray
    #: then places no more story actors on a node than its memory holds, and the autoscaler sees them.
    story_actor_memory_mb: int = 0
    #: Ray workers a process that activates stories keeps started and idle, so that a story actor
    #: activates on one instead of waiting ~1.5 s for a process to start (actors/spare_workers.py);
    #: each costs an idle process (~50 MB). 0: none
    spare_workers: int = 2
    snapshot_every: int = 100
    #: snapshots kept per story (older ones are dropped by the stream); temporal queries before the
    #: oldest kept snapshot replay from the start
    snapshot_keep: int = 20
    projectors: int = 2
    replay_actors: int = 2
    gateway_address: str = "127.0.0.1:50051"
    gateway_token: str = ""
    #: the gateway serves TLS with this PEM certificate (chain) and private key (both or neither;
    #: neither: plaintext). `fleet-actors dev up --tls` makes a self-signed pair.
    gateway_tls_cert: str = ""
    gateway_tls_key: str = ""
    #: with TLS: require client certificates issued by this PEM CA bundle (mutual TLS)
    gateway_tls_client_ca: str = ""
    #: an extra plaintext listener (``host:port``) that serves only grpc.health.v1, for probes that
    #: cannot speak TLS (Kubernetes' native gRPC probes); empty: none
    gateway_health_address: str = ""
    #: clients of the gateway (CLI, demo, probes) dial it with TLS, trusting ``gateway_tls_ca``
    #: (a PEM bundle; empty: the system's roots); setting ``gateway_tls_ca`` alone also turns TLS on
    gateway_tls: bool = False
    gateway_tls_ca: str = ""
    #: a client's own certificate and key, for a gateway that requires mutual TLS
    gateway_tls_client_cert: str = ""
    gateway_tls_client_key: str = ""
    #: the policy file (roles, phases, scope table, the story's phase order); empty: the packaged one
    scope_policy_file: str = ""
    #: UpdateContext: false (the default) skips a change that cannot be applied, with a warning naming
    #: it, and appends the rest as one batch (as the Context Service did); true refuses the whole request
    update_context_all_or_nothing: bool = False
    #: the gateway replaces secrets (passwords, API keys, bearer tokens, private keys, credentials in
    #: connection strings) with a marker before appending them to the immutable log ...
    redact_on_append: bool = True
    #: ... and in every response that carries stored text
    redact_responses: bool = True
    #: more secret patterns, as a JSON object {"name": "regex", ...} added to the built-in ones
    redact_patterns: str = ""
    data_dir: str = ".fleet"
    #: where the gateway and long-running CLI commands serve Prometheus metrics (``host:port``,
    #: ``/metrics``; port 0 picks a free one; empty: not served). Ray actors' metrics are on each Ray
    #: node's own metrics endpoint instead (docs/operations.md).
    metrics_address: str = ""
    #: record metrics at all (0: every metric call does nothing; docs/benchmarks.md has their cost)
    metrics_enabled: bool = True
    #: OpenTelemetry traces: "" (off), "console" (stderr) or "otlp" (OTEL_EXPORTER_OTLP_ENDPOINT);
    #: "discard" makes every span and drops it (to measure the cost of tracing)
    traces_exporter: str = ""
    #: log lines: "text" or "json" (one JSON object a line, with story_id, command_id, trace_id when known)
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.stream_name or any(c in self.stream_name for c in " .*>"):
            raise ConfigurationError(f"FLEET_STREAM_NAME {self.stream_name!r} is not a valid stream name")
        if self.stream_max_age < 0:
            raise ConfigurationError("FLEET_STREAM_MAX_AGE must be >= 0 seconds")
        if self.stream_max_age and not (self.stream_max_age_force or self.archive_url):
            raise ConfigurationError(
                "FLEET_STREAM_MAX_AGE would let JetStream delete events, the only copy of the story "
                "history; set FLEET_ARCHIVE_URL (the archiver then deletes only archived events) or "
                "FLEET_STREAM_MAX_AGE_FORCE=1 if the events are archived elsewhere"
            )
        for name in (
            "max_live_stories",
            "snapshot_every",
            "projectors",
            "replay_actors",
            "stream_replicas",
            "partitions",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"FLEET_{name.upper()} must be at least 1")
        if self.stream_replicas > MAX_STREAM_REPLICAS:
            raise ConfigurationError(f"FLEET_STREAM_REPLICAS must be at most {MAX_STREAM_REPLICAS} (JetStream's limit)")
        if any(c.isspace() for c in self.stream_placement_cluster):
            raise ConfigurationError(f"FLEET_STREAM_PLACEMENT_CLUSTER {self.stream_placement_cluster!r} has whitespace")
        tags = self.stream_placement_tags.split(",") if self.stream_placement_tags.strip() else []
        if any(not tag.strip() or any(c.isspace() for c in tag.strip()) for tag in tags):
            raise ConfigurationError(
                f"FLEET_STREAM_PLACEMENT_TAGS {self.stream_placement_tags!r} must be comma-separated tags "
                "without empty entries or inner whitespace"
            )
        if self.projectors > self.partitions:
            raise ConfigurationError(
                f"FLEET_PROJECTORS={self.projectors} exceeds FLEET_PARTITIONS={self.partitions}: "
                "each projector owns at least one partition"
            )
        if self.traces_exporter not in ("", "none", "console", "otlp", "discard"):
            raise ConfigurationError(
                f"FLEET_TRACES_EXPORTER={self.traces_exporter!r} must be empty, 'none', 'console', 'otlp' or 'discard'"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(f"FLEET_LOG_FORMAT={self.log_format!r} must be 'text' or 'json'")
        if self.story_actor_memory_mb < 0:
            raise ConfigurationError("FLEET_STORY_ACTOR_MEMORY_MB must be >= 0 (0 reserves nothing)")
        if self.spare_workers < 0:
            raise ConfigurationError("FLEET_SPARE_WORKERS must be >= 0 (0 keeps none)")
        if self.actor_idle_seconds <= 0:
            raise ConfigurationError("FLEET_ACTOR_IDLE_SECONDS must be positive")
        if self.actor_keep_alive_seconds <= 0:
            raise ConfigurationError("FLEET_ACTOR_KEEP_ALIVE_SECONDS must be positive")
        if self.redact_patterns.strip():
            from fleet_actors.domain.redaction import parse_patterns

            parse_patterns(self.redact_patterns)  # ConfigurationError naming the bad pattern
        if self.fresh_read_timeout < 0:
            raise ConfigurationError("FLEET_FRESH_READ_TIMEOUT must be 0 (off) or positive")
        if self.duplicate_window <= 0 or self.nats_timeout <= 0:
            raise ConfigurationError("FLEET_DUPLICATE_WINDOW and FLEET_NATS_TIMEOUT must be positive")
        for first, second in (
            ("gateway_tls_cert", "gateway_tls_key"),
            ("gateway_tls_client_cert", "gateway_tls_client_key"),
        ):
            if bool(getattr(self, first)) != bool(getattr(self, second)):
                raise ConfigurationError(
                    f"FLEET_{first.upper()} and FLEET_{second.upper()} go together: set both or neither"
                )
        if self.gateway_tls_client_ca and not self.gateway_tls_cert:
            raise ConfigurationError(
                "FLEET_GATEWAY_TLS_CLIENT_CA (mutual TLS) needs FLEET_GATEWAY_TLS_CERT and FLEET_GATEWAY_TLS_KEY"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read FLEET_* variables (and RAY_ADDRESS); keyword overrides (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"FLEET_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, f.type)
        if "ray_address" not in values and env.get("RAY_ADDRESS"):
            values["ray_address"] = env["RAY_ADDRESS"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        """Every field, but no credential: URLs lose their user info, passwords and tokens show as ***."""
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                value = "***"
            elif isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def story_subject(self, story_id: str, event_type: str) -> str:
        """Where an event is published: ``{prefix}.{story_id}.{event_type}``."""
        return f"{self.subject_prefix}.{story_id}.{event_type}"

    def story_filter(self, story_id: str) -> str:
        """Every stored event of one story. Stored subjects end in a partition token, hence ``>``:
        a ``*`` in its place would match nothing and silently disable the concurrency check."""
        return f"{self.subject_prefix}.{story_id}.>"

    @property
    def gateway_serves_tls(self) -> bool:
        """The gateway listens with TLS (a certificate and key are configured)."""
        return bool(self.gateway_tls_cert)

    @property
    def gateway_client_tls(self) -> bool:
        """Clients dial the gateway with TLS."""
        return self.gateway_tls or bool(self.gateway_tls_ca)

    @property
    def placement_tags(self) -> tuple[str, ...]:
        """FLEET_STREAM_PLACEMENT_TAGS as a tuple (empty when unset)."""
        return tuple(tag.strip() for tag in self.stream_placement_tags.split(",") if tag.strip())

    def partition_filter(self, partition: int) -> str:
        return f"{self.subject_prefix}.*.*.{partition}"

    def as_env(self) -> dict[str, str]:
        """The FLEET_* variables that reproduce these settings in another process."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f"FLEET_{f.name.upper()}"] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def _parse(name: str, raw: str, type_name: object) -> object:
    kind = str(type_name)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"FLEET_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a fleet.env file (KEY=VALUE lines, # comments)."""
    result: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        result[key.strip()] = value.strip()
    return result
