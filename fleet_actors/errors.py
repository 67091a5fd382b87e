"""The one error hierarchy of fleet-actors, and the one table of how each error is answered.

Every adapter translates its driver's errors into these in exactly one place. Each class says,
in its own body, how it leaves the system:

- ``code``: the stable machine-readable reason (the gateway's ``fleet-error-code`` trailer);
- ``grpc_status``: the name of its ``grpc.StatusCode`` (a name, so this module imports nothing
  but the standard library); the gateway answers with ``grpc.StatusCode[error.grpc_status]``;
- ``exit_code``: what the CLI and the jobs exit with after printing ``error: <message>``;
- ``retryable``: whether the same request may succeed later unchanged.

``StoryError``, ``Retryable`` and ``NonRetryable`` are never raised themselves: raise the class
that says what went wrong (a test walks every class and every ``raise``).
"""

from __future__ import annotations

from fleet_actors.urls import redact_urls_in


class StoryError(Exception):
    """Root of every error fleet-actors raises on purpose. Abstract: raise a subclass."""

    retryable: bool = False
    #: machine-readable reason, stable across releases (used by the gateway and the CLI)
    code: str = "STORY_ERROR"
    #: the ``grpc.StatusCode`` name the gateway answers with
    grpc_status: str = "INTERNAL"
    #: the CLI's exit code (2 for every error today: 0 is success, 1 a check that found differences)
    exit_code: int = 2
    #: for a change rejected inside a batch (ApplyChanges): its position in the batch
    change_index: int | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        # A message may quote a server URL or a driver's error that holds one: never its credentials.
        message = redact_urls_in(message)
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):  # keep the keyword-only field across pickling (Ray)
        return (_rebuild_error, (type(self), self.message, self.field, self.__dict__))


def _rebuild_error(cls, message, field, state):
    err = cls.__new__(cls)
    StoryError.__init__(err, message, field=field)
    err.__dict__.update(state)
    return err


class Retryable(StoryError):
    """A transient failure: the same request may succeed later. Abstract: raise a subclass."""

    retryable = True
    code = "UNAVAILABLE"
    grpc_status = "UNAVAILABLE"


class NonRetryable(StoryError):
    """A failure that repeating the same request will not fix. Abstract: raise a subclass."""

    code = "STORY_ERROR"
    grpc_status = "INTERNAL"


class InvalidCommand(NonRetryable):
    """The request itself is malformed: a bad id, a missing field, an oversized value."""

    code = "INVALID_ARGUMENT"
    grpc_status = "INVALID_ARGUMENT"


class RuleViolation(NonRetryable):
    """The request is well-formed but breaks a rule of the story in its current state."""

    code = "FAILED_PRECONDITION"
    grpc_status = "FAILED_PRECONDITION"


class StoryNotFound(NonRetryable):
    code = "NOT_FOUND"
    grpc_status = "NOT_FOUND"

    def __init__(self, story_id: str) -> None:
        super().__init__(f"story {story_id!r} not found", field="story_id")
        self.story_id = story_id


class StoryAlreadyExists(RuleViolation):
    code = "ALREADY_EXISTS"
    grpc_status = "ALREADY_EXISTS"

    def __init__(self, story_id: str) -> None:
        super().__init__(f"story {story_id!r} already exists", field="story_id")
        self.story_id = story_id


class ConcurrencyConflict(NonRetryable):
    """Another writer appended to the story first (optimistic concurrency)."""

    code = "ABORTED"
    grpc_status = "ABORTED"

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class BackendUnavailable(Retryable):
    """A server (JetStream, Valkey, the graph database, Ray) cannot be reached right now."""

    code = "UNAVAILABLE"
    grpc_status = "UNAVAILABLE"


class ConnectionInterrupted(BackendUnavailable):
    """The client's connection dropped and is being re-established: worth trying again soon."""

    code = "UNAVAILABLE"
    grpc_status = "UNAVAILABLE"


class BackendError(NonRetryable):
    """A server was reached but failed a request for a reason no adapter foresees (a query or a
    value it refuses): the same request fails the same way again."""

    code = "INTERNAL"
    grpc_status = "INTERNAL"


class AppendOutcomeUnknown(Retryable):
    """An append timed out: it may or may not have been stored. Retry with the same command id."""

    code = "UNAVAILABLE"
    grpc_status = "UNAVAILABLE"


class ServerTooOld(NonRetryable):
    code = "FAILED_PRECONDITION"
    grpc_status = "FAILED_PRECONDITION"


class ConfigurationError(NonRetryable):
    code = "INVALID_ARGUMENT"
    grpc_status = "INVALID_ARGUMENT"


class GraphBlueGreenUnsupported(ConfigurationError):
    """The graph server cannot hold a second database (Neo4j Community, or ArcadeDB without its HTTP
    API configured): rebuild the graph in place instead (``fleet-actors rebuild``)."""

    code = "INVALID_ARGUMENT"
    grpc_status = "INVALID_ARGUMENT"


class IncompatibleRelease(NonRetryable):
    """A client and a story actor from different releases cannot read each other's messages."""

    code = "FAILED_PRECONDITION"
    grpc_status = "FAILED_PRECONDITION"


class EventDecodeError(NonRetryable):
    """Stored bytes that this code cannot turn into an event (corrupt, unknown type, newer schema)."""

    code = "DATA_LOSS"
    grpc_status = "DATA_LOSS"


class ProjectionTimeout(Retryable):
    code = "DEADLINE_EXCEEDED"
    grpc_status = "DEADLINE_EXCEEDED"


class ProjectionGap(NonRetryable):
    """The graph still misses events of a story after the projector replayed them from the log."""

    code = "DATA_LOSS"
    grpc_status = "DATA_LOSS"


class NothingParked(NonRetryable):
    """A release was asked for a story that has no parked (dead-lettered) event."""

    code = "NOT_FOUND"
    grpc_status = "NOT_FOUND"

    def __init__(self, story_id: str) -> None:
        super().__init__(f"story {story_id!r} has no parked event", field="story_id")
        self.story_id = story_id


class ArchiveUnavailable(Retryable):
    """The event archive (folder or bucket) cannot be read or written right now."""

    code = "UNAVAILABLE"
    grpc_status = "UNAVAILABLE"


class ArchiveCorrupted(NonRetryable):
    """The event archive does not match its manifest: a segment is missing, altered or unreadable."""

    code = "DATA_LOSS"
    grpc_status = "DATA_LOSS"
