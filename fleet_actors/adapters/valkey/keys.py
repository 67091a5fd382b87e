"""Every Valkey key fleet-actors uses, in one place.

    context:{story_id}                       hash {version, doc}: a story's context document
    processed:{event_id}                     an event id already projected (TTL)
    consumer:{name}:offset                   the last stream sequence a consumer committed
    projection:pause:{stream}                the rebuild job that asked the live projectors to pause
    projection:paused:{stream}:{consumer}    a consumer's acknowledgement of that pause (TTL)
    projector:{stream}:{name}:status         a projector's published status (JSON)
    rebuild:{stream}:{job_id}                hash: a rebuild job's end sequence and phase
    dlq:{stream}:held / dlq:{stream}:release hashes: stories held for a parked event / release requests
                                             (``dlq:held`` without a stream: before 2026-12, still read)
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


def status_key(stream: str, projector: str) -> str:
    return f"projector:{stream}:{projector}:status"


def job_key(stream: str, job_id: str) -> str:
    return f"rebuild:{stream}:{job_id}"


def held_key(stream: str) -> str:
    return f"dlq:{stream}:held"


def release_key(stream: str) -> str:
    return f"dlq:{stream}:release"


#: the stories held before the keys named their stream (one stream per deployment then); read still
LEGACY_HELD_KEY = "dlq:held"


def bundle_key(case_id: str) -> str:
    return f"rehydration:{case_id}"
