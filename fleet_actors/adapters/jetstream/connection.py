"""Connecting to NATS, checking the server, declaring the event stream; one error translation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    DiscardPolicy,
    Placement,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
    SubjectTransform,
)
from nats.js.manager import JetStreamManager

from fleet_actors.adapters.jetstream.nats_client import FleetNatsClient
from fleet_actors.errors import BackendUnavailable, ConfigurationError, ConnectionInterrupted, ServerTooOld, StoryError
from fleet_actors.observability.metrics import metrics
from fleet_actors.settings import Settings
from fleet_actors.urls import redact_url

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 12, 0)

log = logging.getLogger(__name__)

#: JetStream API error codes we act on
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_BATCH_DUPLICATE = 10201
ERR_SUBJECTS_OVERLAP = 10065
#: the server's cap on concurrent atomic batches per stream / an abandoned batch: nothing stored, retry
ERR_BATCH_TOO_MANY_INFLIGHT = 10210
ERR_BATCH_INCOMPLETE = 10176


def translate_nats_error(error: BaseException, what: str) -> StoryError:
    """The one place NATS errors become ours (conflicts are decided by the caller, who knows the context)."""
    if isinstance(error, StoryError):
        return error
    if isinstance(error, nats.errors.ConnectionClosedError | nats.errors.ConnectionReconnectingError):
        return ConnectionInterrupted(f"the NATS connection was interrupted while {what}: {error}")
    if isinstance(error, asyncio.TimeoutError | nats.errors.TimeoutError):
        return BackendUnavailable(f"NATS did not answer in time while {what}")
    if isinstance(error, nats.errors.NoServersError | nats.errors.ConnectionClosedError | ConnectionError | OSError):
        return BackendUnavailable(f"cannot reach NATS while {what}: {error}")
    if isinstance(error, nats.js.errors.ServiceUnavailableError | nats.js.errors.NoStreamResponseError):
        return BackendUnavailable(f"JetStream is unavailable while {what}: {error}")
    if isinstance(error, nats.js.errors.APIError) and error.err_code == ERR_SUBJECTS_OVERLAP:
        return ConfigurationError(f"JetStream refused {what}: {error.description}; use another FLEET_SUBJECT_PREFIX")
    if isinstance(error, nats.js.errors.APIError):
        return BackendUnavailable(f"JetStream refused {what}: {error.description} (code {error.err_code})")
    return BackendUnavailable(f"unexpected NATS failure while {what}: {error!r}")


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """NATS and JetStream failures inside the block raised as ours (``StoryError`` passes through)."""
    try:
        yield
    except StoryError:
        raise
    except Exception as error:
        raise translate_nats_error(error, what) from None


async def declare_stream(
    jsm: JetStreamManager, config: StreamConfig, kept_up_to_date: tuple[str, ...], what: str
) -> None:
    """Create the stream, or update it where one of the ``kept_up_to_date`` settings differs."""
    assert config.name is not None, "a declared stream config names its stream"
    with nats_errors(f"declaring {what}"):
        try:
            current = (await jsm.stream_info(config.name)).config
        except nats.js.errors.NotFoundError:
            await jsm.add_stream(config)
            return
        if any(getattr(current, name) != getattr(config, name) for name in kept_up_to_date):
            await jsm.update_stream(config)


class _ConnectionLog:
    """nats-py's callbacks: one log line per change of state (lost, restored, a new kind of error),
    instead of the traceback nats-py logs for every failed attempt without an error_cb; each change
    is counted in ``fleet_nats_connection_events_total``."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.last_error: BaseException | None = None
        self.client: Client | None = None
        self._reported = ""
        self._connected = False
        #: connected once: the first connect is cancelled at the first refusal, and the metrics' first
        #: use (imports) inside these callbacks kept a cancelled connect alive, so only after it
        self._established = False
        self._down_since: float | None = None
        self._failed_attempts = 0

    refused: asyncio.Event | None = None

    def established(self, client: Client) -> None:
        self.client, self._connected, self._established = client, True, True

    async def error(self, error: Exception) -> None:
        self.last_error = error
        self._failed_attempts += 1
        if self.refused is not None and not self._connected and isinstance(error, ConnectionRefusedError):
            self.refused.set()
        text = _describe(error)
        if text != self._reported:
            self._reported = text
            if self._established:
                metrics().nats_connection_events.inc("error")
            log.warning("%s: NATS at %s: %s", self.name, self.url, text)

    async def disconnected(self) -> None:
        if self.client is not None and self.client.is_closed:
            return  # closed on purpose
        if self._connected:
            self._connected, self._down_since, self._failed_attempts = False, time.monotonic(), 0
            metrics().nats_connection_events.inc("disconnected")
            log.warning("%s: NATS connection to %s lost; reconnecting", self.name, self.url)

    async def reconnected(self) -> None:
        down = time.monotonic() - self._down_since if self._down_since is not None else 0.0
        metrics().nats_connection_events.inc("reconnected")
        log.warning(
            "%s: NATS connection to %s restored after %.1f s (%d failed attempts)",
            self.name, self.url, down, self._failed_attempts,
        )  # fmt: skip
        self._connected, self._reported, self.last_error, self._down_since = True, "", None, None

    async def closed(self) -> None:
        self._connected = False


async def _first_connect(events: _ConnectionLog, timeout: float, connecting: Awaitable[Client]) -> Client:
    """The connection, or the first refusal (one server), or TimeoutError after ``timeout``."""
    task = asyncio.ensure_future(connecting)
    waiters: set[asyncio.Future[Any]] = {task}
    refused = asyncio.ensure_future(events.refused.wait()) if events.refused is not None else None
    if refused is not None:
        waiters.add(refused)
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if refused is not None:
            refused.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise events.last_error if events.last_error is not None else TimeoutError()


async def _connected(nc: FleetNatsClient, servers: list[str], **options: Any) -> FleetNatsClient:
    """``nats.connect``, with our client class (bulk reads' sinks)."""
    await nc.connect(servers, **options)
    return nc


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, asyncio.TimeoutError | nats.errors.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


async def connect_nats(settings: Settings, *, name: str = "fleet-actors") -> Client:
    """Connect with unlimited reconnects, then refuse servers too old for our concurrency headers.

    The first connection is bounded by ``FLEET_NATS_TIMEOUT``; a server that refuses or does not
    answer is one ``BackendUnavailable`` saying which, and state changes are logged one line each."""
    url = redact_url(settings.nats_url)
    servers = [u.strip() for u in settings.nats_url.split(",") if u.strip()]
    events = _ConnectionLog(name, url)
    # With one server, a refused first connection is final: say so now rather than at the timeout.
    events.refused = asyncio.Event() if len(servers) == 1 else None
    try:
        # Unlimited reconnects keep a live connection through server restarts, but nats-py applies
        # them to the first connect too, which would then wait forever for a server that is down.
        nc = await _first_connect(
            events,
            settings.nats_timeout,
            _connected(
                FleetNatsClient(),
                # a comma-separated list seeds the connection with several cluster members; the client
                # also learns the others from the server it reaches and fails over between them
                servers,
                name=name,
                connect_timeout=settings.nats_timeout,
                # FLEET_NATS_USER / _PASSWORD, for servers whose URLs carry no user info
                user=settings.nats_user or None,
                password=settings.nats_password or None,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                allow_reconnect=True,
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
                closed_cb=events.closed,
            ),
        )
    except Exception as error:
        cause = events.last_error or error
        if isinstance(cause, asyncio.TimeoutError | nats.errors.TimeoutError):
            reason = f"no answer within {settings.nats_timeout:g} s (FLEET_NATS_TIMEOUT)"
        else:
            reason = _describe(cause)
        raise BackendUnavailable(f"cannot reach NATS at {url}: {reason}") from None
    events.established(nc)
    version = nc.connected_server_version
    if (version.major, version.minor, version.patch) < MIN_SERVER_VERSION:
        with contextlib.suppress(Exception):
            await nc.close()
        raise ServerTooOld(
            f"nats-server {version} at {redact_url(settings.nats_url)} is too old: fleet-actors needs 2.12 or newer "
            "(older servers silently ignore the per-story concurrency header and atomic batches)"
        )
    return nc


#: stream settings brought up to date at start-up (replicas and placement: scale R1 -> R3 in place)
_UPDATABLE = ("max_age", "duplicate_window", "compression", "allow_direct", "allow_atomic", "num_replicas", "placement")


def partition_transform(settings: Settings) -> SubjectTransform:
    """Stored subjects get a last token: the partition of the story id (a stable hash, fixed count)."""
    prefix = settings.subject_prefix
    return SubjectTransform(
        src=f"{prefix}.*.*",
        dest=f"{prefix}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({settings.partitions},1)}}}}",
    )


def stream_placement(settings: Settings) -> Placement | None:
    """FLEET_STREAM_PLACEMENT_CLUSTER / _TAGS for every stream the project declares (None: anywhere)."""
    if not settings.stream_placement_cluster and not settings.placement_tags:
        return None
    return Placement(cluster=settings.stream_placement_cluster or None, tags=list(settings.placement_tags) or None)


def event_stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream_name,
        subjects=[f"{settings.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        placement=stream_placement(settings),
        # With an archive, the archiver deletes aged events once archived: never the server's timer.
        max_age=0 if settings.archive_url else settings.stream_max_age,
        duplicate_window=settings.duplicate_window,
        compression=StoreCompression.S2,
        allow_direct=True,
        allow_atomic=True,
        subject_transform=partition_transform(settings),
    )


async def stream_exists(nc: Client, stream: str) -> bool:
    try:
        await nc.jsm().stream_info(stream)
    except nats.js.errors.NotFoundError:
        return False
    except Exception as error:
        raise translate_nats_error(error, f"looking up stream {stream}") from None
    return True


async def ensure_event_stream(nc: Client, settings: Settings, *, update_existing: bool = True) -> None:
    """Create the stream or bring its settings up to date; safe to run at every start-up.

    Readers pass ``update_existing=False``: they create a missing stream (so that start-up order does
    not matter) but never change one, lest a tool run with other settings (an operator's shell without
    ``FLEET_STREAM_REPLICAS``, say) scale the stream down.
    """
    wanted = event_stream_config(settings)
    wanted_transform = partition_transform(settings)  # the one event_stream_config set
    jsm = nc.jsm()
    with nats_errors(f"declaring stream {settings.stream_name}"):
        try:
            info = await jsm.stream_info(settings.stream_name)
        except nats.js.errors.NotFoundError:
            await jsm.add_stream(wanted)
            return
        current = info.config
        if current.subjects != wanted.subjects:
            raise ConfigurationError(
                f"stream {settings.stream_name} exists with subjects {current.subjects}, expected {wanted.subjects}"
            )
        transform = current.subject_transform
        if transform is None or (transform.src, transform.dest) != (
            wanted_transform.src,
            wanted_transform.dest,
        ):
            raise ConfigurationError(
                f"stream {settings.stream_name} was created with another partitioning "
                f"({transform.dest if transform else 'none'}); FLEET_PARTITIONS must match the stream"
            )
        drift = {name for name in _UPDATABLE if _normal(getattr(current, name)) != _normal(getattr(wanted, name))}
        if drift and update_existing:
            wanted.metadata = current.metadata  # keeps the archiver's purge watermark (fleet_actors.archive)
            await jsm.update_stream(wanted)


def _normal(value: object) -> object:
    # The server echoes durations as floats and unset flags as None/False.
    if value is None or value is False:
        return None
    if isinstance(value, float | int) and not isinstance(value, bool):
        return round(float(value), 3) or None
    return value
