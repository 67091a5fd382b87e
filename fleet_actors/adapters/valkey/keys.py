"""Every Valkey key fleet-actors uses, in one place.

    context:{story_id}                       hash {version, doc}: a story's context document
    processed:{event_id}                     an event id already projected (TTL)
    consumer:{name}:offset                   the last stream sequence a consumer committed
    projection:pause:{stream}                the rebuild job that asked the live projectors to pause
    projection:paused:{stream}:{consumer}    a consumer's acknowledgement of that pause (TTL)
    projector:{name}:status                  a projector's published status (JSON)
    rebuild:{stream}:{job_id}                hash: a rebuild job's end sequence and phase
    dlq:held / dlq:release                   hashes: stories held for a parked event / release requests
    rehydration:{case_id}                    a persisted RehydrateSession bundle (TTL)
"""

from __future__ import annotations


def context_key(story_id: str) -> str:
    return f"context:{story_id}"


def processed_key(event_id: str) -> str:
    return f"processed:{event_id}"


def offset_key(consumer: str) -> str:
    return f"consumer:{consumer}:offset"


def pause_key(stream: str) -> str:
    return f"projection:pause:{stream}"


def paused_key(stream: str, consumer: str) -> str:
    return f"projection:paused:{stream}:{consumer}"


def status_key(projector: str) -> str:
    return f"projector:{projector}:status"


def job_key(stream: str, job_id: str) -> str:
    return f"rebuild:{stream}:{job_id}"


HELD_KEY = "dlq:held"
RELEASE_KEY = "dlq:release"


def bundle_key(case_id: str) -> str:
    return f"rehydration:{case_id}"
