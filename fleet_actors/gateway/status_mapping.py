"""The one place where errors become gRPC statuses.

Deliberate errors (:class:`~fleet_actors.errors.StoryError`) are answered with the status their
class declares (``grpc_status``: the table is ``fleet_actors/errors.py``), with details that name
the bad field; anything else is a bug or an outage we did not foresee: it is logged with its
traceback under a reference the caller gets, and answered with INTERNAL (or UNAVAILABLE for Ray
failures) -- never UNKNOWN with a traceback. Whatever the details say, they never carry a URL's
user info (:func:`~fleet_actors.urls.redact_urls_in`, the last line of defence behind the errors'
own messages).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass

import grpc
import ray.exceptions

from fleet_actors.errors import StoryError, StoryNotFound
from fleet_actors.urls import redact_urls_in

log = logging.getLogger(__name__)

#: trailing metadata keys that carry the machine-readable reason and the bad field
CODE_KEY = "fleet-error-code"
FIELD_KEY = "fleet-error-field"


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
        The status code, a message for the caller (no credentials in it) and the trailing metadata.
    """
    failure = _failure(error)
    return dataclasses.replace(failure, details=redact_urls_in(failure.details))


def _failure(error: BaseException) -> RpcFailure:
    if isinstance(error, StoryError):
        # A deliberate error: its class names its status, and its message is safe to show.
        return RpcFailure(grpc.StatusCode[error.grpc_status], _details(error), error.code, error.field)
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
