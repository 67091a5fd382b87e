"""The one error hierarchy of fleet-actors.

Every adapter translates its driver's errors into these in exactly one place; the gateway
and the CLI map them to gRPC status codes and exit messages. ``retryable`` tells callers
whether the same request may succeed later unchanged.
"""

from __future__ import annotations


class StoryError(Exception):
    """Root of every error fleet-actors raises on purpose."""

    retryable: bool = False
    #: machine-readable reason, stable across releases (used by the gateway and the CLI)
    code: str = "STORY_ERROR"
    #: for a change rejected inside a batch (ApplyChanges): its position in the batch
    change_index: int | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
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
    """A transient failure: the same request may succeed later."""

    retryable = True
    code = "UNAVAILABLE"


class NonRetryable(StoryError):
    """A failure that repeating the same request will not fix."""


class InvalidCommand(NonRetryable):
    """The request itself is malformed: a bad id, a missing field, an oversized value."""

    code = "INVALID_ARGUMENT"


class RuleViolation(NonRetryable):
    """The request is well-formed but breaks a rule of the story in its current state."""

    code = "FAILED_PRECONDITION"


class StoryNotFound(NonRetryable):
    code = "NOT_FOUND"

    def __init__(self, story_id: str) -> None:
        super().__init__(f"story {story_id!r} not found", field="story_id")
        self.story_id = story_id


class StoryAlreadyExists(RuleViolation):
    code = "ALREADY_EXISTS"

    def __init__(self, story_id: str) -> None:
        super().__init__(f"story {story_id!r} already exists", field="story_id")
        self.story_id = story_id


class ConcurrencyConflict(NonRetryable):
    """Another writer appended to the story first (optimistic concurrency)."""

    code = "ABORTED"

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class BackendUnavailable(Retryable):
    """A server (JetStream, Valkey, the graph database, Ray) cannot be reached right now."""


class AppendOutcomeUnknown(Retryable):
    """An append timed out: it may or may not have been stored. Retry with the same command id."""


class ServerTooOld(NonRetryable):
    code = "FAILED_PRECONDITION"


class ConfigurationError(NonRetryable):
    code = "INVALID_ARGUMENT"


class IncompatibleRelease(NonRetryable):
    """A client and a story actor from different releases cannot read each other's messages."""

    code = "FAILED_PRECONDITION"


class EventDecodeError(NonRetryable):
    """Stored bytes that this code cannot turn into an event (corrupt, unknown type, newer schema)."""

    code = "DATA_LOSS"


class ProjectionTimeout(Retryable):
    code = "DEADLINE_EXCEEDED"


class ArchiveUnavailable(Retryable):
    """The event archive (folder or bucket) cannot be read or written right now."""


class ArchiveCorrupted(NonRetryable):
    """The event archive does not match its manifest: a segment is missing, altered or unreadable."""

    code = "DATA_LOSS"
