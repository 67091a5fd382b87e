"""The one place where errors become gRPC statuses.

Deliberate errors (:class:`~fleet_actors.errors.StoryError`) map by class to a precise status
whose details name the bad field; anything else is a bug or an outage we did not foresee: it is
logged with its traceback under a reference the caller gets, and answered with INTERNAL (or
UNAVAILABLE for Ray failures) -- never UNKNOWN with a traceback.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import grpc
import ray.exceptions

from fleet_actors.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    EventDecodeError,
    IncompatibleRelease,
    InvalidCommand,
    ProjectionTimeout,
    Retryable,
    RuleViolation,
    ServerTooOld,
    StoryAlreadyExists,
    StoryError,
    StoryNotFound,
)

log = logging.getLogger(__name__)

#: trailing metadata keys that carry the machine-readable reason and the bad field
CODE_KEY = "fleet-error-code"
FIELD_KEY = "fleet-error-field"

# First match wins: subclasses come before their bases.
_STATUS_BY_ERROR: tuple[tuple[type[StoryError], grpc.StatusCode], ...] = (
    (InvalidCommand, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigurationError, grpc.StatusCode.INVALID_ARGUMENT),
    (StoryNotFound, grpc.StatusCode.NOT_FOUND),
    (StoryAlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (RuleViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (ServerTooOld, grpc.StatusCode.FAILED_PRECONDITION),
    (IncompatibleRelease, grpc.StatusCode.FAILED_PRECONDITION),
    (ConcurrencyConflict, grpc.StatusCode.ABORTED),
    (EventDecodeError, grpc.StatusCode.DATA_LOSS),
    (ProjectionTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Retryable, grpc.StatusCode.UNAVAILABLE),
)


@dataclass(frozen=True)
class RpcFailure:
    """How a failed call is answered."""

    code: grpc.StatusCode
    details: str
    #: the stable reason (``StoryError.code``, or INTERNAL/UNAVAILABLE/DEADLINE_EXCEEDED)
    reason: str
    field: str | None = None

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """``fleet-error-code`` and, when known, ``fleet-error-field``."""
        pairs = [(CODE_KEY, self.reason)]
        if self.field:
            pairs.append((FIELD_KEY, self.field))
        return tuple(pairs)


def rpc_failure(error: BaseException) -> RpcFailure:
    """Translate an exception raised while serving a call into its status, details and metadata.

    Args:
        error: what the handler raised (never ``asyncio.CancelledError``: that must propagate).

    Returns:
        The status code, a message for the caller and the trailing metadata.
    """
    if isinstance(error, StoryError):
        for kind, code in _STATUS_BY_ERROR:
            if isinstance(error, kind):
                return RpcFailure(code, _details(error), error.code, error.field)
        # A deliberate error without a more precise class: its message is safe to show.
        return RpcFailure(grpc.StatusCode.INTERNAL, _details(error), "INTERNAL", error.field)
    if isinstance(error, TimeoutError):
        return RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed", "DEADLINE_EXCEEDED")
    if isinstance(error, ray.exceptions.RayError):
        log.warning("Ray failed while serving a call: %r", error)
        return RpcFailure(
            grpc.StatusCode.UNAVAILABLE, f"the actor system failed: {type(error).__name__}", "UNAVAILABLE"
        )
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s while serving a call", reference, exc_info=error)
    return RpcFailure(
        grpc.StatusCode.INTERNAL, f"internal error (reference {reference}; see the gateway log)", "INTERNAL"
    )


def _details(error: StoryError) -> str:
    message = error.message
    if isinstance(error, StoryNotFound) and "not found" not in message.lower():
        message = f"{message} (not found)"  # callers of the Context Service look for these words
    if error.field and error.field not in message:
        return f"{error.field}: {message}"
    return message
